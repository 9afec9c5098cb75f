"""The oracle: the only door from an attack to the victim (the repository's DESIGN.md, "The oracle").

An attack gets an :class:`OracleView` of an :class:`Oracle` for a batch of samples and nothing else
(the view exposes only its access level's methods and read-only facts). The oracle

* answers at the attack's declared access level and no higher: ``gradient`` (white-box: logits,
  scores, labels and input gradients), ``scores`` (probabilities and labels) or ``label`` (top-1 only);
* counts queries per sample: one query = one input row evaluated by the victim; a forward+backward
  row of a gradient call is one query too (and is also tallied in ``grad_queries``). A batched call
  says, through ``idx``, which sample each row belongs to, so N candidates for sample i cost i N queries;
* enforces the budget: a row whose sample has no queries left, or is done, is not evaluated and not
  counted; its answer is NaN (scores/logits), -1 (labels) or a zero gradient;
* judges success itself on every row it evaluates: untargeted ``label != y``, targeted
  ``label == target``, inside ``[0, 1]`` and, when ``eps`` is set, inside the threat model's ball
  (both up to ``tol``); it records the query number of the first success and keeps, per sample, the
  adversarial point of smallest distortion (in the budget's norm) seen so far;
* keeps, when ``checkpoints`` (sorted query counts) are given, each sample's best adversarial
  distortion "at c queries" for every checkpoint c: the smallest distortion (budget's norm, any
  adversarial point in ``[0, 1]``, inside or outside ``eps``) among the sample's rows whose query
  number is <= c (the anytime curve of minimal-distortion attacks; a call that straddles c counts
  only its rows numbered <= c);
* reports which samples are done (``active``), so batched attacks stop spending on them;
* at the end re-checks every success with fresh, uncounted forward passes (``finalize``); with a
  randomized victim the re-check repeats ``recheck_repeats`` times and success must hold every time;
* optionally (``confirm_repeats = k > 0``, for randomized victims) confirms a success *when it is
  seen*: a row counts as successful only if k more fresh, uncounted evaluations of the same point
  agree, so a lucky draw of the defense's randomness does not end a sample's attack (GenAttack's TVM
  protocol: "classified as target 3 times in a row", [alzantot2019 §2.6.2.2]). The confirmations are the
  referee's, like the final re-check; the attack learns their outcome only through ``active``.

Everything stays on the victim's device; the hot path does not synchronise with the host except to
skip rows that are not answered.

When nothing during the batch depends on success (``stop_on_success`` off, as in minimal-distortion runs,
and no ``confirm_repeats``), a call only counts its rows and copies those with an adversarial label; the
judging (box, distortion, first success, anytime curve, best point) runs in bulk on the copies when any of
its results is read (``success``, ``best_dist``, ``best_x``, ``dist_at``, ``queries_at_success``, a snapshot,
``finalize``) or once the copies hold ``_PENDING_VALUES`` values. The result is the same as judging each call
as it comes: of rows with equal distortion, the earliest call's is kept, and in that call the last row's.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from robench.errors import VictimError
from robench.geometry import GEOMETRIES, geometry
from robench.referee.types import ACCESS_LEVELS, ACCESS_RANK, AccessError, OracleResult
from robench.referee.view import OracleView


class Oracle:
    def __init__(self, model: nn.Module, x0: torch.Tensor, y: torch.Tensor, *, access: str,
                 norm: str = "linf", eps: Optional[float] = None, max_queries: int = 10_000,
                 targets: Optional[torch.Tensor] = None, stop_on_success: bool = True,
                 recheck_repeats: int = 1, tol: float = 1e-5, num_classes: Optional[int] = None,
                 eot_samples: int = 1, checkpoints=None, confirm_repeats: int = 0,
                 watch: Optional[Callable[[], None]] = None, box: Tuple[float, float] = (0.0, 1.0)):
        if access not in ACCESS_LEVELS:
            raise ValueError(f"access must be one of {ACCESS_LEVELS}, got {access!r}")
        norm = str(norm)
        if norm not in GEOMETRIES:
            raise ValueError(f"norm must be one of {', '.join(GEOMETRIES)}, got {norm!r}")
        self._model = model
        self._counts_answers = bool(getattr(model, "counts_answers", False))  # the engine's counting victim (guard)
        self._access = access
        self._norm = norm
        self._geometry = geometry(norm)  # distance in the budget's norm (robench.geometry)
        self._eps = None if eps is None else float(eps)
        self._max_queries = int(max_queries)
        self._stop_on_success = bool(stop_on_success)
        self._recheck_repeats = int(recheck_repeats)
        self._confirm_repeats = int(confirm_repeats)
        if int(eot_samples) < 1:
            raise ValueError(f"eot_samples must be >= 1, got {eot_samples}")
        self._eot_samples = int(eot_samples)
        self._tol = float(tol)
        self._low, self._high = float(box[0]), float(box[1])  # the input domain's box (robench/domain.py)
        self._broken: Optional[str] = None  # why the victim failed mid-run (VictimError), sticky
        self.device = x0.device
        self._x0 = x0.detach()
        self._y = y.to(self.device)
        self._targets = None if targets is None else targets.to(self.device)
        self._targeted = targets is not None
        n = self.n = x0.shape[0]
        dev = self.device
        self._queries = torch.zeros(n, dtype=torch.long, device=dev)
        self._grad_queries = torch.zeros(n, dtype=torch.long, device=dev)
        self._success = torch.zeros(n, dtype=torch.bool, device=dev)
        self._all_succeeded = n == 0  # every sample has succeeded (no first success left to book)
        self._queries_at_success = torch.full((n,), -1, dtype=torch.long, device=dev)
        self._success_call = torch.full((n,), -1, dtype=torch.long, device=dev)
        self._best_dist = torch.full((n,), float("inf"), device=dev)
        self._best_key = self._best_dist.double()  # float64: dist + _OUTSIDE keeps full precision
        self._best_x = self._x0.clone()
        cps = sorted({int(c) for c in (checkpoints or ())})
        if cps and cps[0] < 1:
            raise ValueError(f"checkpoints must be query counts >= 1, got {cps}")
        self.checkpoints = tuple(cps)
        self._cp = torch.tensor(cps, dtype=torch.long, device=dev)
        self._dist_at = torch.full((n, len(cps)), float("inf"), device=dev)
        self._call_times: list[float] = []
        self._t0 = time.perf_counter()
        self._finalized: Optional[OracleResult] = None
        self._watch = watch  # the engine's flush check, called after every answered call (engine.Flusher)
        # Deferred booking: when nothing during the batch depends on success (no stop on success, no confirmation
        # of successes as they are seen; derived from those settings on every call, never stored), the rows with
        # an adversarial label are copied here and judged in bulk when their outcome is next read (a property,
        # snapshot, finalize) or once they hold ``_PENDING_VALUES`` values
        self._pending: list = []  # (rows' copy, their samples, their query numbers, call number)
        self._pending_values = 0
        if num_classes is None:  # output width only, never shown to the attack: not a query
            with torch.no_grad():
                num_classes = int(model(self._x0[:1]).shape[1])
        self._k = int(num_classes)

    def view(self, access: Optional[str] = None, observe: Optional[Callable] = None) -> "OracleView":
        """What an attack gets: answers at ``access`` (default and ceiling: the oracle's level) and read-only facts."""
        return OracleView(self, access or self._access, observe)

    restrict = view  # what a composite attack hands a member: a view at the member's (lower) level

    # ------------------------------------------------------------------ what an attack may read
    # (copies: the oracle's own bookkeeping cannot be edited from outside)
    x0 = property(lambda self: self._x0.clone(), doc="The clean images of the batch.")
    y = property(lambda self: self._y.clone(), doc="Their true labels.")
    targets = property(lambda self: None if self._targets is None else self._targets.clone(),
                       doc="Target classes (targeted runs), else None.")
    queries = property(lambda self: self._queries.clone(), doc="Queries spent per sample.")
    grad_queries = property(lambda self: self._grad_queries.clone(), doc="Of which gradient (forward+backward) rows.")
    success = property(lambda self: self._settled("_success"), doc="Samples the oracle has seen succeed.")
    queries_at_success = property(lambda self: self._settled("_queries_at_success"),
                                  doc="Query number of each sample's first success (-1: none yet).")
    best_dist = property(lambda self: self._settled("_best_dist"), doc="Distortion of each sample's best adversarial point.")
    best_x = property(lambda self: self._settled("_best_x"), doc="Each sample's best adversarial point (x0 where none).")
    dist_at = property(lambda self: self._settled("_dist_at"),
                       doc="(n, len(checkpoints)): best adversarial distortion within each checkpoint's queries.")

    def _settled(self, name: str) -> torch.Tensor:
        """A copy of the bookkeeping tensor ``name`` with every row answered so far booked."""
        self._settle()
        return getattr(self, name).clone()

    @property
    def active(self) -> torch.Tensor:
        """Bool per sample: still worth querying (budget left and, for eps-bounded runs, not yet successful)."""
        return self._left() > 0

    def _left(self) -> torch.Tensor:
        """Queries each sample may still be answered: max_queries - queries, 0 once successful when the run stops
        on success (derived from the counters on every call, never stored: stored, an attack could raise it)."""
        left = self._max_queries - self._queries
        return left.masked_fill(self._success, 0) if self._stop_on_success else left

    def active_indices(self) -> torch.Tensor:
        return self.active.nonzero().flatten()

    @property
    def remaining(self) -> torch.Tensor:
        """Queries each sample has left."""
        return (self._max_queries - self._queries).clamp_min(0)

    @property
    def num_classes(self) -> int:
        return self._k

    # ------------------------------------------------------------------ queries
    def labels(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Top-1 labels of rows ``x`` (row r belongs to sample ``idx[r]``); -1 where not answered."""
        logits, ok, pred = self._forward(x, idx)
        if logits is not None and pred.shape[0] == x.shape[0]:
            return pred  # every row answered: the top-1 labels the oracle judged (a fresh tensor)
        out = torch.full((x.shape[0],), -1, dtype=torch.long, device=self.device)
        if logits is not None:
            out[ok] = pred
        return out

    def scores(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Softmax probabilities of rows ``x``; NaN rows where not answered. Needs access ``scores``.

        With ``eot_samples = k > 1`` (a randomized victim; GenAttack's "expectation of the fitness over
        t = 32 queries", [alzantot2019 §2.6.2.2]) each row is evaluated k times (k queries, each judged) and
        the answer is the mean of the answered copies' probabilities.
        """
        self._require("scores")
        k = self._eot_samples
        if k == 1:
            logits, ok, _ = self._forward(x, idx)
            return self._scatter_rows(None if logits is None else logits.softmax(1), ok, x.shape[0])
        if idx is None:
            if x.shape[0] != self.n:
                raise ValueError(f"{x.shape[0]} rows for {self.n} samples: pass idx (the sample of each row)")
            idx = torch.arange(self.n, device=self.device)
        m = x.shape[0]
        logits, ok, _ = self._forward(x.repeat(k, *([1] * (x.dim() - 1))), idx.to(self.device).repeat(k))
        p = self._scatter_rows(None if logits is None else logits.softmax(1), ok, m * k).view(k, m, -1)
        answered = ~torch.isnan(p[..., 0])
        cnt = answered.sum(0)
        mean = torch.nan_to_num(p).sum(0) / cnt.clamp_min(1).unsqueeze(1)
        return torch.where((cnt > 0).unsqueeze(1), mean, torch.full_like(mean, float("nan")))

    def logits(self, x: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits of rows ``x``; NaN rows where not answered. Needs access ``gradient`` (white-box)."""
        self._require("gradient")
        logits, ok, _ = self._forward(x, idx)
        return self._scatter_rows(logits, ok, x.shape[0])

    def gradient(self, x: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 idx: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, d loss / d x) for rows ``x``; ``loss_fn(logits, idx_rows)`` returns one loss per row.

        Each answered row costs one query (a gradient query). Unanswered rows get NaN logits and a
        zero gradient. Needs access ``gradient``.

        EOT (expectation over transformation, Athalye et al. [athalye2018]): with ``eot_samples = k > 1`` each
        row is evaluated k times (k forward+backward rows, k queries, each judged for success: the
        victim's randomized input defense draws afresh every time) and the returned gradient is the
        mean over the answered copies; the logits returned are those of the first copy. When the
        victim's forward has no gradient path at all (a non-differentiable input defense without
        BPDA), the gradient is zero: that is exactly what a naive attacker gets.
        """
        self._require("gradient")
        k = self._eot_samples
        if k == 1:
            return self._gradient_rows(x, loss_fn, idx)
        if idx is None:
            if x.shape[0] != self.n:
                raise ValueError(f"{x.shape[0]} rows for {self.n} samples: pass idx (the sample of each row)")
            idx = torch.arange(self.n, device=self.device)
        m = x.shape[0]
        logits, g = self._gradient_rows(x.repeat(k, *([1] * (x.dim() - 1))), loss_fn, idx.to(self.device).repeat(k))
        answered = ~torch.isnan(logits[:, 0])
        cnt = answered.view(k, m).sum(0).clamp_min(1).to(g.dtype)
        g = g.view(k, m, *x.shape[1:]).sum(0) / cnt.view(-1, *([1] * (x.dim() - 1)))
        return logits[:m], g

    def _gradient_rows(self, x, loss_fn, idx, m: Optional[int] = None):
        """Logits and gradients of rows ``x`` from one forward pass. ``m`` None (:meth:`gradient`): the gradient
        of the sum of ``loss_fn``'s losses, one query per row. ``m`` (:meth:`jacobian`): ``loss_fn`` returns
        (rows, m) losses, one backward pass per column, (rows, m, ...) gradients, m queries per row."""
        per = 1 if m is None else m

        def zeros(n):
            return x.new_zeros((n, *x.shape[1:]) if m is None else (n, m, *x.shape[1:]))

        idx, rank, counts, ok, all_ok = self._admit(x, idx, per_row=per)
        if not all_ok and not bool(ok.any()):
            return self._scatter_rows(None, ok, x.shape[0]), zeros(x.shape[0])
        xr, ir, rr, counts = self._answered(x, idx, rank, counts, ok, all_ok)
        xr = xr.detach().requires_grad_(True)
        g = None
        with torch.enable_grad():
            logits = self._eval(xr, answers=per)
            loss = loss_fn(logits, ir)
            if m is not None and tuple(loss.shape) != (xr.shape[0], m):
                raise ValueError(f"jacobian: loss_fn must return (rows, m) = ({xr.shape[0]}, {m}) losses, "
                                 f"got {tuple(loss.shape)}")
            if loss.requires_grad and m is None:
                g, = torch.autograd.grad(loss.sum(), xr, allow_unused=True)
            elif loss.requires_grad:
                g = zeros(xr.shape[0])
                for j in range(m):
                    gj, = torch.autograd.grad(loss[:, j].sum(), xr, retain_graph=j < m - 1, allow_unused=True)
                    if gj is not None:
                        g[:, j] = gj
        if g is None:
            g = zeros(xr.shape[0])
        logits = logits.detach()
        self._record(xr.detach(), ir, rr, logits, gradient=True, per_row=per, counts=counts)
        if all_ok:
            return logits, g
        grad = zeros(x.shape[0])
        grad[ok] = g
        return self._scatter_rows(logits, ok, x.shape[0]), grad

    def jacobian(self, x: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], m: int,
                 idx: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, J) for rows ``x``: ``loss_fn(logits, idx_rows)`` returns (rows, m) losses, ``J`` (rows, m, ...)
        the gradient of each column with respect to the row.

        One forward pass and m backward passes (FAB's K - 1 logit-difference gradients, as the authors take
        them [croce2020fab]), counted exactly as m :meth:`gradient` calls on the same rows: m gradient queries
        per answered row, a row answered only when its sample has m queries left (all m or none), the row judged
        once with the query number the first of the m calls gives it. Unanswered rows get NaN logits and zero
        gradients. With ``eot_samples > 1`` the columns are m :meth:`gradient` calls (each with its own draws of
        the victim's randomness). Needs access ``gradient``.
        """
        self._require("gradient")
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"jacobian: m must be an integer >= 1 (the loss columns), got {m!r}")
        if self._eot_samples > 1 or m == 1:
            cols = [self.gradient(x, lambda z, i, j=j: loss_fn(z, i)[:, j], idx) for j in range(m)]
            return cols[0][0], torch.stack([g for _, g in cols], 1)
        return self._gradient_rows(x, loss_fn, idx, m)

    # ------------------------------------------------------------------ end of the attack
    def finalize(self) -> OracleResult:
        """Re-check every success with fresh, uncounted forward passes and freeze the result."""
        if self._finalized is not None:
            return self._finalized
        self._settle()
        confirmed = self._success.clone()
        sel = self._success.nonzero().flatten()
        if len(sel):
            xs = self._best_x[sel]
            ok = torch.ones(len(sel), dtype=torch.bool, device=self.device)
            for _ in range(max(1, self._recheck_repeats)):
                with torch.no_grad():
                    pred = self._eval(xs).argmax(1)
                ok &= self._criterion(xs, sel, pred)[1]
            confirmed[sel] = ok
        self._finalized = self._result(confirmed)
        return self._finalized

    def snapshot(self) -> OracleResult:
        """The bookkeeping as it stands, mid-batch: successes as seen (``success`` = ``claimed``, no
        re-check), ``seconds`` so far. No forward pass, no random draw: taking it changes nothing.
        The engine writes the rows of finished samples from it as *pending* rows (README, "What a run writes")."""
        self._settle()
        return self._result(self._success.clone())

    def _result(self, confirmed: torch.Tensor) -> OracleResult:
        dist_at = self._dist_at.clone()
        dist_at[self._success & ~confirmed] = float("inf")  # an unconfirmed best point certifies nothing
        call_times = torch.tensor([t - self._t0 for t in self._call_times] or [float("nan")], dtype=torch.float64)
        sc = self._success_call.cpu()
        secs = torch.where(sc >= 0, call_times[sc.clamp_min(0)], torch.tensor(float("nan"), dtype=torch.float64))
        return OracleResult(
            success=confirmed.cpu(), claimed=self._success.cpu(), queries=self._queries.cpu(),
            grad_queries=self._grad_queries.cpu(), queries_at_success=self._queries_at_success.cpu(),
            seconds_at_success=secs, adversarial=torch.isfinite(self._best_dist).cpu(),
            best_x=self._best_x.detach().cpu(), seconds=time.perf_counter() - self._t0,
            checkpoints=self.checkpoints, dist_at=dist_at.cpu())

    # ------------------------------------------------------------------ internals
    def _require(self, level: str) -> None:
        if ACCESS_RANK[self._access] < ACCESS_RANK[level]:
            raise AccessError(f"an attack with access '{self._access}' asked for {level}-level answers")

    def _eval(self, x: torch.Tensor, answers: int = 1) -> torch.Tensor:
        """The victim's logits for rows ``x``. A victim that raises, or returns non-finite logits, stops
        the run: :class:`~robench.errors.VictimError`, sticky (every later query and the engine see it too,
        so an attack cannot swallow it)."""
        try:
            out = self._model(x, answers=answers) if answers != 1 and self._counts_answers else self._model(x)
        except Exception as e:  # the victim's own failure, in one line, chained
            first = (str(e).strip().splitlines() or [""])[0][:200]
            self._broken = f"the victim raised {type(e).__name__} on a query: {first}"
            raise VictimError(self._broken) from e
        # one sum first (a non-finite logit makes it non-finite; a finite sum means every logit is finite), the
        # elementwise check only when the sum is not finite (it can overflow on large finite logits)
        o = out.detach() if out.requires_grad else out
        if not math.isfinite(float(o.sum())) and not bool(torch.isfinite(o).all()):
            self._broken = (f"the victim returned non-finite logits (NaN or inf) for a query of {x.shape[0]} row(s); "
                            f"the run stopped (records of completed batches are kept)")
            raise VictimError(self._broken)
        return out

    @property
    def broken(self) -> Optional[str]:
        """Why the victim failed during this batch (None: it did not)."""
        return self._broken

    def _admit(self, x: torch.Tensor, idx: Optional[torch.Tensor], per_row: int = 1):
        """Rows that get answered: their sample is active and still has budget for this row (``per_row``
        queries each)."""
        if self._broken is not None:
            raise VictimError(self._broken)
        if self._finalized is not None:
            raise RuntimeError("the oracle is finalized: no more queries")
        if idx is None:
            if x.shape[0] != self.n:
                raise ValueError(f"{x.shape[0]} rows for {self.n} samples: pass idx (the sample of each row)")
            idx = torch.arange(self.n, device=self.device)
            rank, counts = None, None
        else:
            idx = idx.to(self.device, torch.long)
            if idx.shape[0] != x.shape[0]:
                raise ValueError("idx must give one sample index per row of x")
            rank, counts = _rank_within_group(idx, self.n)
        # active and within budget: rank < max_queries - queries (rank >= 0, so also queries < max_queries),
        # and not yet successful when the run stops on success (self.active & (rank < self.remaining));
        # rank None: every rank is 0
        left = self._left()[idx]
        if rank is None:
            ok = left > 0 if per_row == 1 else left >= per_row
        else:
            ok = rank < left if per_row == 1 else (rank + 1) * per_row <= left
        all_ok = bool(ok.all())
        return idx, rank, counts, ok, all_ok

    @staticmethod
    def _answered(x, idx, rank, counts, ok, all_ok):
        """The admitted rows of a call: (rows, their samples, their ranks, rows per sample or None to recount)."""
        if all_ok:
            return x, idx, rank, counts
        return x[ok], idx[ok], None if rank is None else rank[ok], None

    def _forward(self, x: torch.Tensor, idx: Optional[torch.Tensor]):
        idx, rank, counts, ok, all_ok = self._admit(x, idx)
        if not all_ok and not bool(ok.any()):
            return None, ok, None
        xr, ir, rr, counts = self._answered(x, idx, rank, counts, ok, all_ok)
        if xr.requires_grad:
            xr = xr.detach()
        with torch.no_grad():
            logits = self._eval(xr)
        pred = self._record(xr, ir, rr, logits, gradient=False, counts=counts)
        return logits, ok, pred

    def _scatter_rows(self, vals: Optional[torch.Tensor], ok: torch.Tensor, n_rows: int) -> torch.Tensor:
        if vals is not None and vals.shape[0] == n_rows:
            return vals
        out = torch.full((n_rows, self._k), float("nan"), device=self.device)
        if vals is not None:
            out[ok] = vals
        return out

    def _adversarial_label(self, idx: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Per row: the label alone makes it adversarial (untargeted: not y; targeted: the target)."""
        return (pred == self._targets[idx]) if self._targeted else (pred != self._y[idx])

    def _criterion(self, x: torch.Tensor, idx: torch.Tensor, pred: torch.Tensor,
                   is_adv: Optional[torch.Tensor] = None):
        """(is adversarial and a valid image, is that and within eps, distortion) per row (``is_adv``: the rows'
        :meth:`_adversarial_label`, when the caller has it)."""
        if is_adv is None:
            is_adv = self._adversarial_label(idx, pred)
        xf = x.flatten(1)  # amin and amax, not aminmax: on the CPU aminmax over a dimension is about 8 times slower
        lo, hi = xf.amin(1), xf.amax(1)  # NaN propagates: a NaN row is outside the box
        in_box = (lo >= self._low - self._tol) & (hi <= self._high + self._tol)
        dist = self._geometry.distance(x - self._x0[idx])
        valid = is_adv & in_box
        within = valid if self._eps is None else valid & (dist <= self._eps + self._tol)
        return valid, within, dist

    def _record(self, x: torch.Tensor, idx: torch.Tensor, rank: Optional[torch.Tensor], logits: torch.Tensor,
                gradient: bool, per_row: int = 1, counts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Count, judge and keep the rows ``x`` the victim answered with ``logits`` (``rank``: each row's rank
        among this call's rows of its sample, None when all are 0; ``counts``: rows per sample, when the caller
        has them). Returns the rows' top-1 labels."""
        n = self.n
        call = len(self._call_times)
        self._call_times.append(time.perf_counter())
        if counts is None:
            counts = torch.bincount(idx, minlength=n)
        if per_row != 1:
            counts = counts * per_row
        before = self._queries
        self._queries = before + counts
        if gradient:
            self._grad_queries += counts
        pred = logits.argmax(1)
        # no row with an adversarial label (most calls): no box or distance to compute, no success, no new best
        # point, no anytime-curve entry; the counts above are all that changes
        is_adv = self._adversarial_label(idx, pred)
        if bool(is_adv.any()):
            # query number of each row, per sample (a row worth per_row queries: the number its first query would
            # get in per_row calls of one query each, as the first of those calls judges it)
            qnum = before[idx] + 1 if rank is None else before[idx] + rank + 1
            if not self._stop_on_success and self._confirm_repeats == 0:  # judged later, in bulk, on a copy of the
                # rows (the attack may reuse its tensors)
                xa = x[is_adv]
                self._pending.append((xa, idx[is_adv], qnum[is_adv], call))
                self._pending_values += xa.numel()
                if self._pending_values >= _PENDING_VALUES:
                    self._settle()
            else:
                valid, within, dist = self._criterion(x, idx, pred, is_adv)
                if bool(valid.any()):
                    self._book(x, idx, qnum, torch.full_like(idx, call), valid, within, dist)
        if self._watch is not None:
            self._watch()
        return pred

    def _settle(self) -> None:
        """Book the deferred rows (all of them, as one call would, in the order they were answered)."""
        if not self._pending:
            return
        xs, ids, qs, calls = zip(*self._pending)
        self._pending, self._pending_values = [], 0
        x, idx, qnum = torch.cat(xs), torch.cat(ids), torch.cat(qs)
        lens = [len(i) for i in ids]
        call = torch.repeat_interleave(torch.tensor(calls, dtype=torch.long, device=self.device),
                                       torch.tensor(lens, dtype=torch.long, device=self.device), output_size=sum(lens))
        valid, within, dist = self._criterion(x, idx, None, torch.ones_like(idx, dtype=torch.bool))
        if bool(valid.any()):
            self._book(x, idx, qnum, call, valid, within, dist)

    def _book(self, x: torch.Tensor, idx: torch.Tensor, qnum: torch.Tensor, call: torch.Tensor, valid: torch.Tensor,
              within: torch.Tensor, dist: torch.Tensor) -> None:
        """Book rows with at least one valid adversarial one: first successes, the anytime curve, the best points.
        ``qnum``: each row's query number; ``call``: each row's call number (rows of one call or of several, in
        the order they were answered)."""
        n = self.n
        if self._confirm_repeats > 0 and bool(within.any()):
            rows = within.nonzero().flatten()
            ok = torch.ones(len(rows), dtype=torch.bool, device=self.device)
            with torch.no_grad():
                for _ in range(self._confirm_repeats):
                    ok &= self._criterion(x[rows], idx[rows], self._eval(x[rows]).argmax(1))[1]
            within = within.clone()
            within[rows] = ok
        # first success: the smallest query number among the successful rows (a sample's query numbers are
        # distinct, so it names one row; nothing to do once every sample has succeeded, as in minimal-distortion
        # runs after their start; the flag can only skip successes)
        if not self._all_succeeded:
            big = torch.iinfo(torch.long).max
            first = torch.full((n,), big, dtype=torch.long, device=self.device)
            first.scatter_reduce_(0, idx, torch.where(within, qnum, big), "amin")
            new = (~self._success) & (first < big)
            self._queries_at_success = torch.where(new, first, self._queries_at_success)
            hit = within & (qnum == first[idx])  # the call of that row
            at = torch.full_like(self._success_call, -1).scatter_(0, idx[hit], call[hit])
            self._success_call = torch.where(new, at, self._success_call)
            self._success |= new
            self._all_succeeded = bool(self._success.all())
        if len(self.checkpoints):  # anytime curve: rows numbered <= c count for checkpoint c
            upto = qnum[:, None] <= self._cp[None, :]
            vals = torch.where(valid[:, None] & upto, dist[:, None], torch.full_like(upto, float("inf"), dtype=dist.dtype))
            self._dist_at.scatter_reduce_(0, idx[:, None].expand_as(vals), vals, "amin")
        # best adversarial point: smallest distortion, points inside the eps-ball ranked before any
        # outside it, so a successful sample's best point is always a success-eligible one
        d64 = dist.double()
        inf = torch.full_like(d64, float("inf"))
        key = torch.where(within, d64, torch.where(valid, d64 + _OUTSIDE, inf))
        old = self._best_key
        self._best_key = old.scatter_reduce(0, idx, key, "amin")
        improved = (key == self._best_key[idx]) & (key < old[idx])
        if bool(improved.any()):
            rows = improved.nonzero().flatten()
            # of equal keys: the first call's (a later call's equal key is no improvement), and in that call the
            # last row's (what judging the call alone kept)
            order = call[rows] * (len(idx) + 1) - rows
            pick = torch.full((n,), torch.iinfo(torch.long).max, dtype=torch.long, device=self.device)
            pick.scatter_reduce_(0, idx[rows], order, "amin")
            rows = rows[order == pick[idx[rows]]]
            self._best_x[idx[rows]] = x[rows]
            self._best_dist[idx[rows]] = dist[rows]


#: the referee's settings, read-only (an attack never holds the Oracle, only an OracleView; still,
#: nothing here is writable from outside)
for _name in ("access", "norm", "eps", "max_queries", "stop_on_success", "recheck_repeats", "confirm_repeats",
              "eot_samples", "tol", "targeted", "low", "high"):
    setattr(Oracle, _name, property(lambda self, _n=_name: getattr(self, "_" + _n), doc=f"The oracle's {_name} (read-only)."))
del _name

#: added to the ranking key of adversarial points outside the eps-ball so any point inside ranks first
_OUTSIDE = 1e6
#: deferred rows are booked once they hold this many values (4M: 16 MB of float32; 5,000 MNIST rows)
_PENDING_VALUES = 1 << 22


def _rank_within_group(idx: torch.Tensor, n: int) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """(rank, counts): for each row, how many earlier rows of this call belong to the same sample (0, 1, 2, ...;
    None when every rank is 0), and the rows per sample."""
    counts = torch.bincount(idx, minlength=n)
    if len(idx) == 0 or int(counts.max()) <= 1:  # one row per sample (the common call): every rank is 0
        return None, counts
    sorted_idx, order = torch.sort(idx, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank_sorted = torch.arange(len(idx), device=idx.device) - starts[sorted_idx]
    rank = torch.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return rank, counts

