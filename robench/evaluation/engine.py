"""One engine: a :class:`Plan` (slice, targets, batches, per-batch seeds), a :class:`Referee` (the
oracle's settings) and :func:`execute`, the one batch loop in robench.

``robench attack`` (main run and the adaptive protocol's second run), detection runs, the
end-of-training robust evaluation (robust_eval.py) and the Python API (:func:`robench.evaluate`) all
run attacks through :func:`execute`: per batch, a fresh :class:`~robench.referee.oracle.Oracle` for the
batch's attacked rows, the attack driving an :class:`~robench.referee.oracle.OracleView` of it with the
batch's generator, the oracle's certified result turned into record fields
(:func:`robench.evaluation.results.attack_fields`). The attack never sees the model, the plan or the records.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Sequence

import torch

from robench.errors import VictimError
from robench.evaluation import results as R
from robench.referee.oracle import Oracle
from robench.referee.types import OracleResult


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch ``batch``'s generator: a hash of (run seed, global batch number), so a batch
    draws the same random numbers whichever shard or resumed process attacks it (README, "Sharding")."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(batch)]).generate_state(1, dtype=np.uint64)[0])


def choose_targets(mode: Any, y: torch.Tensor, logits: torch.Tensor, num_classes: int,
                   generator: torch.Generator, positions: torch.Tensor | None = None,
                   n_slice: int | None = None) -> torch.Tensor:
    """random: uniform over the other classes (seeded, never the label); least_likely: the clean
    prediction's least-likely class; an int: that class for every sample (``all``: see
    :func:`expand_all_targets`, which ``robench attack`` applies before this).

    Random targets are drawn for the whole unsharded slice (``n_slice`` samples) and picked at this
    shard's ``positions``, so a sample gets the same target whether or not the slice is sharded."""
    if mode == "random":
        if positions is None:
            positions, n_slice = torch.arange(len(y)), len(y)
        off = torch.randint(1, num_classes, (int(n_slice),), generator=generator)[positions]
        return (y + off) % num_classes
    if mode == "least_likely":
        return logits.argmin(1).cpu()
    if mode == "all":
        from robench.errors import RobenchError

        raise RobenchError("budget.target=all (every other class of each sample) is for robench attack; in Python, "
                           "repeat the inputs and pass their targets as a tensor")
    return torch.full_like(y, int(mode))


def expand_all_targets(num_classes: int, pos: torch.Tensor, *rows: torch.Tensor):
    """``budget.target=all``: each sample becomes ``num_classes - 1`` consecutive rows, one per other
    class (in increasing order: ``(y + 1) % K, (y + 2) % K, ...``), as the thesis's speech
    experiments attack every (source, target) pair [alzantot2019 §3.5.1]. ``rows[0]`` must be the
    labels ``y``; every tensor in ``rows`` (aligned with ``pos``) is repeated; ``pos`` (positions in
    the unsharded slice) becomes ``pos * (K - 1) + j``, so a shard of whole batches of samples is a
    run of whole batches of rows. Returns (targets, pos, *rows)."""
    k = int(num_classes) - 1
    y = rows[0]
    reps = [r.repeat_interleave(k, 0) for r in rows]
    j = torch.arange(k).repeat(len(y))
    targets = (reps[0] + 1 + j) % int(num_classes)
    return (targets, pos.repeat_interleave(k) * k + j, *reps)


@dataclass(frozen=True)
class Referee:
    """The oracle's settings for one run: from the run's configuration, never from the attack."""

    access: str
    norm: str
    eps: Optional[float]
    max_queries: int
    num_classes: int
    stop_on_success: bool = True
    recheck_repeats: int = 1
    confirm_repeats: int = 0
    eot_samples: int = 1
    checkpoints: tuple = ()
    box: tuple = (0.0, 1.0)  # the input domain's [low, high] (robench/domain.py)

    def oracle(self, model, x0: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor],
               watch: Optional[Callable[[], None]] = None) -> Oracle:
        return Oracle(model, x0, y, access=self.access, norm=self.norm, eps=self.eps, max_queries=self.max_queries,
                      targets=targets, stop_on_success=self.stop_on_success, recheck_repeats=self.recheck_repeats,
                      num_classes=self.num_classes, eot_samples=self.eot_samples if self.access != "label" else 1,
                      checkpoints=self.checkpoints, confirm_repeats=self.confirm_repeats, watch=watch, box=self.box)


@dataclass
class Plan:
    """What gets attacked: the slice (``x`` in [0, 1] on CPU, ``y``), ``targets`` (None: untargeted),
    which rows are ``attacked``, each row's global batch number (``batch_of``; batch b = positions
    [b*B, (b+1)*B) of the unsharded slice) and the run ``seed`` (batch b's generator: :func:`batch_seed`)."""

    x: torch.Tensor
    y: torch.Tensor
    targets: Optional[torch.Tensor]
    attacked: torch.Tensor
    batch_of: List[int]
    seed: int
    batches: Dict[int, List[int]] = field(init=False)

    def __post_init__(self):
        self.batches = {}
        for k, bt in enumerate(self.batch_of):
            self.batches.setdefault(int(bt), []).append(k)

    @classmethod
    def contiguous(cls, x, y, targets, attacked, batch_size: int, seed: int) -> "Plan":
        """Batches of ``batch_size`` consecutive rows, numbered from 0."""
        return cls(x, y, targets, attacked, [k // int(batch_size) for k in range(len(y))], int(seed))

    def attacked_rows(self, bt: int) -> torch.Tensor:
        return torch.tensor([k for k in self.batches[bt] if bool(self.attacked[k])], dtype=torch.long)

    def generator(self, bt: int, device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(batch_seed(self.seed, bt))


@dataclass
class BatchOutcome:
    """One executed batch: its number, the plan rows attacked, the oracle's certified result (None
    when no row was attacked) and, per attacked row, the record fields the result gives."""

    batch: int
    rows: torch.Tensor
    result: Optional[OracleResult]
    fields: List[Dict[str, Any]]
    violations: List[Dict[str, Any]] = field(default_factory=list)  # rows the independent final check refused

    @property
    def seconds(self) -> float:
        return self.result.seconds if self.result is not None else 0.0


#: mid-batch flushing (README, "What a run writes"): checks for newly finished samples every FLUSH_FIRST
#: seconds until one finds some; the wait doubles after each write, up to FLUSH_SECONDS. A write
#: rewrites records.csv: 0.17 s for 1,000 rows on a loaded 2-core machine, under 2% of the time.
FLUSH_SECONDS = 10.0
FLUSH_FIRST = 1.0


class Flusher:
    """Mid-batch flushing: rows of finished samples reach the caller before their batch ends.

    The oracle calls it after every answered call. Once the wait has passed (counted from the batch's
    start, then from the last check; ``first`` seconds at first, doubling after each write up to
    ``seconds``) it hands ``pending(batch, rows, fields)`` the record fields of the samples that
    finished since the last write, taken from :meth:`Oracle.snapshot`.

    "Finished" is the oracle's signal, never the attack's: ``active`` turned False (the sample's
    budget is spent, or it succeeded in an eps-bounded run). The oracle answers such a sample no more,
    so its counts, first success and best point are final. Only the end-of-batch re-check and the
    referee's independent check (integrity.verify) are still to come. Those need forward passes, and
    running them mid-batch would spend the victim's random draws and trip the guard's stray-forward
    hook. So these fields are *pending*: written for display, replaced by the certified ones when the
    batch completes, and discarded on resume (the batch is re-run whole with its own seed). An attack
    cannot make a sample "finished" except by spending its budget or succeeding, and a pending row
    never counts anywhere. The check evaluates nothing and draws no random number, so a run with it
    computes exactly what a run without it computes. A minimal-distortion sample that the attack
    stops early (e.g. the stall rule of decision/common.py) stays active in the oracle's eyes and is
    written when its batch ends. This is a deliberate choice: the oracle cannot tell "stopped" from
    "between calls"."""

    def __init__(self, pending: Callable[[int, torch.Tensor, List[Dict[str, Any]]], None], seconds: float,
                 first: float):
        self.pending, self.seconds = pending, float(seconds)
        self.wait = min(float(first), self.seconds)
        self.oracle: Optional[Oracle] = None

    def start(self, bt: int, rows: torch.Tensor, x0: torch.Tensor, oracle: Oracle) -> None:
        self.bt, self.rows, self.x0, self.oracle = bt, rows, x0, oracle
        self.sent = torch.zeros(len(rows), dtype=torch.bool)
        self.next = time.monotonic() + self.wait

    def __call__(self) -> None:
        now = time.monotonic()
        if self.oracle is None or now < self.next:
            return
        self.next = now + self.wait
        new = ~self.oracle.active.cpu() & ~self.sent
        if not bool(new.any()):
            return
        self.wait = min(2 * self.wait, self.seconds)
        self.next = now + self.wait
        self.sent |= new
        j = new.nonzero().flatten()
        self.pending(self.bt, self.rows[j], R.attack_fields(self.oracle.snapshot(), self.x0, rows=j.tolist()))


def prepare_attack(attack, context) -> None:
    """Hand the attack its declared context once (see :class:`~robench.attacks.base.AttackContext`)."""
    if hasattr(attack, "prepare"):
        attack.prepare(context)


class RunSink(Protocol):
    """What the engine reports to mid-batch (the runner implements it; robench/evaluation/runner.py)."""

    def pending(self, batch: int, rows: torch.Tensor, fields: List[Dict[str, Any]]) -> None:
        """The uncertified record fields of samples the oracle has finished, before their batch ends."""


def execute(attack, model, plan: Plan, referee: Referee, device, *, skip: Sequence[int] = (),
            after: Optional[Callable[[BatchOutcome], None]] = None, name: Optional[str] = None,
            sink: Optional[RunSink] = None, flush_seconds: Optional[float] = None) -> Iterator[BatchOutcome]:
    """Run ``attack`` over the plan's batches (ascending, those in ``skip`` left out), yielding each
    batch's :class:`BatchOutcome` as soon as it is done (the caller writes records, flushes, reports
    progress). ``after(outcome)`` may add fields (e.g. a detector's score) before it is yielded.
    ``sink.pending(batch, rows, fields)``, optional: called mid-batch, at most every ``flush_seconds``
    (default :data:`FLUSH_SECONDS`) once the first waits (:data:`FLUSH_FIRST`) have passed, with the
    uncertified fields of samples the oracle has finished (:class:`Flusher`); the batch's outcome
    supersedes them.

    The referee's guard (robench/referee/guard.py) wraps each ``attack.run``: tampering with the oracle,
    its classes or the victim raises RobenchError; every reported success and distortion is then
    recomputed independently, and refused rows are dropped and listed in ``violations``. An isolated
    attack (robench/referee/isolation) is an object like any other here: its ``run`` drives the view
    from a sandboxed child process."""
    from robench.referee.guard import Guard, drop, verify

    skip = set(skip)
    name = name or getattr(attack, "name", None) or type(attack).__name__
    guard = Guard(model, name)
    randomized = referee.recheck_repeats > 1 or referee.confirm_repeats > 0 or referee.eot_samples > 1
    flusher = None if sink is None else Flusher(sink.pending, FLUSH_SECONDS if flush_seconds is None else flush_seconds,
                                                FLUSH_FIRST)
    yield from _batches(attack, model, plan, referee, device, skip, after, guard, verify, drop, randomized, flusher)


def _batches(attack, model, plan, referee, device, skip, after, guard, verify, drop, randomized, flusher):
    for bt in sorted(plan.batches):
        if bt in skip:
            continue
        sel = plan.attacked_rows(bt)
        if len(sel) == 0:
            yield BatchOutcome(bt, sel, None, [])
            continue
        x0 = plan.x[sel]
        y0, t0 = plan.y[sel], None if plan.targets is None else plan.targets[sel]
        # the oracle's own copies: an edit of its state never reaches the engine's x0, y0, t0 (the final check's)
        oracle = referee.oracle(guard.victim, x0.to(device, copy=True), y0.to(device, copy=True),
                                None if t0 is None else t0.to(device, copy=True), watch=flusher)
        if flusher is not None:
            flusher.start(bt, sel, x0, oracle)
        guard.arm(oracle)
        try:
            attack.run(oracle.view(), plan.generator(bt, device))
        except VictimError:
            raise
        except Exception:
            if oracle.broken is not None:  # the victim failed and the attack turned it into another error
                raise VictimError(oracle.broken) from None
            raise
        finally:
            pre = guard.disarm()
        if oracle.broken is not None:  # the attack swallowed the victim's failure: the run stops all the same
            raise VictimError(oracle.broken)
        res = oracle.finalize()
        guard.check(oracle, referee, res.queries, bt, pre)
        fields = R.attack_fields(res, x0)
        refused = verify(model, res, x0, y0, t0, referee, device, randomized)
        drop(fields, refused)
        out = BatchOutcome(bt, sel, res, fields, [{"batch": int(bt), "row": int(sel[j])} for j in refused])
        if after is not None:
            after(out)
        yield out


def run_all(attack, model, plan: Plan, referee: Referee, device) -> List[BatchOutcome]:
    """:func:`execute` to the end (a re-run, the train-time evaluation)."""
    return list(execute(attack, model, plan, referee, device))
