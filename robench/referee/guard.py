"""The referee's checks on an attack that runs in the engine's process (issue 17 item 4; README, "Untrusted attacks").

An attack holds only an :class:`~robench.referee.view.OracleView`, but Python code can still walk
closure cells, ``gc.get_objects()`` or frames to the :class:`~robench.referee.oracle.Oracle` and the victim.
:class:`Guard` is what :func:`robench.evaluation.engine.execute` wraps around every ``attack.run``:

* **counting victim**: the oracle gets a closure over the engine's model that counts the rows it
  evaluates (a row of :meth:`~robench.referee.oracle.Oracle.jacobian` as the m queries it answers, from the
  oracle's ``answers=m``); after the batch, the oracle's reported queries must match those rows (exactly,
  or within the confirmations' factor ``1 + confirm_repeats``): a zeroed ``_queries`` or a forward pass through
  the oracle's model outside its bookkeeping shows as a mismatch; and no sample's reported queries may exceed the
  configured budget (a budget raised for a while and put back compares equal afterwards);
* **stray forwards**: every module of the victim gets, for the attack's run, an instance ``forward`` that
  notes a run outside an oracle call and calls the module's own (an attack that found the model through
  ``gc`` and queried it uncounted); removing or replacing it, or the class's ``forward``, is flagged too.
  (An instance wrapper costs ~0.2 us per module call where a forward pre-hook cost ~2.3 us: the hook
  takes ``nn.Module``'s slow call path, on every module of every query.);
* **class and instance integrity**: ``Oracle``, ``OracleView`` and ``Guard`` class dictionaries are
  snapshotted before the attack and compared after (changes are restored, then reported); the
  oracle's settings, batch and model reference, and its instance attributes, must be as the engine set them;
* **independent final check** (:func:`verify`): after ``finalize()``, every reported success and
  distortion is recomputed from the stored best point, the engine's clean images (the Plan's copy),
  the configured ball (the Referee) and a fresh forward pass of the engine's own model reference;
  a sample that fails is dropped (no success, no distortion) and listed in ``summary.json``'s ``integrity``.

Tampering with the referee's machinery (the first three) stops the run with a one-line
:class:`~robench.errors.RobenchError` naming the attack; a point that fails the final check is
dropped and flagged. In-process checks are a tripwire, not a sandbox: code that finds and edits the
guard itself can defeat them; ``isolate=true`` (robench/referee/isolation.py) runs the attack in a child
process that never holds the victim.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from robench.errors import RobenchError
from robench.geometry import distortion
from robench.referee.oracle import Oracle
from robench.referee.view import OracleView

#: the oracle's settings and the engine's Referee field each must equal
_SETTINGS = {"_access": "access", "_norm": "norm", "_eps": "eps", "_max_queries": "max_queries",
             "_stop_on_success": "stop_on_success", "_recheck_repeats": "recheck_repeats",
             "_confirm_repeats": "confirm_repeats"}
TOL = 1e-5
_TOL0 = TOL  # the guard checks that nobody raised it


class Guard:
    """One guard per :func:`~robench.evaluation.engine.execute` call: wraps the victim, arms before each batch's
    ``attack.run``, checks after it (:meth:`check`, raising on tampering)."""

    def __init__(self, model, attack_name: str):
        self.attack_name = attack_name
        st = [0, 0, 0]  # [depth inside an oracle call, rows evaluated, stray module runs]

        def victim(x, answers=1):
            # answers: the queries each row answers (Oracle.jacobian: m gradients from one forward), counted
            # as that many rows so the reported queries still match exactly
            if type(answers) is not int or answers < 1:  # an int >= 1, nothing else (no bool, no tensor)
                raise RobenchError(f"the counting victim was called with answers={answers!r}")
            st[0] += 1
            st[1] += x.shape[0] * answers
            try:
                return model(x)
            finally:
                st[0] -= 1

        def stray(f):
            def forward(*args, **kwargs):
                if st[0] == 0:
                    st[2] += 1
                return f(*args, **kwargs)
            return forward

        victim.counts_answers = True  # the oracle passes answers= to this model only
        self.victim = victim
        self._st = st
        self._stray = stray
        self._model = model
        self._wrapped: tuple = ()  # (module, its instance forward before or _MISSING, the wrapper, class forward)
        self._classes = {cls: dict(cls.__dict__) for cls in (Oracle, OracleView, Guard)}
        self._codes = _code_objects()

    # ------------------------------------------------------------------ around attack.run
    def arm(self, oracle: Oracle) -> None:
        st = self._st
        st[1] = st[2] = 0
        wrapped = []
        for m in self._model.modules():
            if isinstance(m, torch.jit.ScriptModule):  # runs its compiled forward: the counting wrapper still sees it
                continue
            before = m.__dict__.get("forward", _MISSING)
            w = self._stray(m.forward)
            m.__dict__["forward"] = w
            wrapped.append((m, before, w, type(m).forward))
        self._wrapped = tuple(wrapped)  # a tuple: what disarm checks and restores cannot be edited, only replaced
        self._oracle_keys = set(oracle.__dict__)
        self._refs = {k: oracle.__dict__[k] for k in ("_model", "_x0", "_y", "_targets", "_geometry")}
        self._own = dict(self.__dict__)  # the guard's own attributes, compared after the attack

    def disarm(self) -> List[str]:
        """Restore the victim's forwards; the violations of the machinery seen (restoring patched classes)."""
        v = []
        if self._wrapped is not self._own.get("_wrapped"):
            v.append("changed the guard (_wrapped)")
        for m, before, w, cls in self._own.get("_wrapped", ()):
            if m.__dict__.get("forward", _MISSING) is not w or type(m).forward is not cls:
                v.append(f"replaced {type(m).__name__}.forward (the guard's stray-forward check)")
            if before is _MISSING:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = before
        self._wrapped = ()
        self._rows = self._st[1]  # the attack's rows (finalize's re-check comes after)
        for cls, snap in self._classes.items():
            now = dict(cls.__dict__)
            changed = sorted(k for k in set(snap) | set(now) if snap.get(k, _MISSING) is not now.get(k, _MISSING))
            for k in changed:
                if k in snap:
                    setattr(cls, k, snap[k])
                else:
                    delattr(cls, k)
            if changed:
                v.append(f"patched {cls.__name__}.{', '.join(changed)} (restored)")
        if self._st[2]:
            v.append(f"ran the victim outside the oracle ({self._st[2]} module calls)")
        swapped = sorted(n for n, (f, code) in _code_objects().items() if self._codes.get(n, (f, code))[1] is not code)
        for n in swapped:  # a function's code object replaced (e.g. verify's): restored, then reported
            f, code = self._codes[n]
            f.__code__ = code
        if swapped:
            v.append(f"replaced the code of {', '.join(swapped)} (restored)")
        changed = sorted(k for k in set(self._own) | set(self.__dict__) if k not in ("_own", "_rows", "_wrapped")
                         and self._own.get(k, _MISSING) is not self.__dict__.get(k, _MISSING))
        if changed or globals().get("TOL") != _TOL0:
            v.append(f"changed the guard ({', '.join(changed) or 'TOL'})")
        return v

    def check(self, oracle: Oracle, referee, queries: torch.Tensor, batch: int, pre: List[str]) -> None:
        """After ``finalize()``: the oracle's settings, references and counts; raises on any violation."""
        v = list(pre)
        d = oracle.__dict__
        extra = sorted(set(d) - self._oracle_keys)
        if extra:
            v.append(f"set oracle attributes {', '.join(extra)}")
        for k, ref in self._refs.items():
            if d.get(k) is not ref:
                v.append(f"replaced the oracle's {k}")
        for k, f in _SETTINGS.items():
            if d.get(k) != getattr(referee, f):
                v.append(f"changed the oracle's {k[1:]} ({d.get(k)!r}, configured {getattr(referee, f)!r})")
        if (d.get("_low"), d.get("_high")) != tuple(float(b) for b in referee.box):
            v.append(f"changed the oracle's input box ({d.get('_low')!r}, {d.get('_high')!r}), configured {referee.box!r}")
        over = int(queries.max()) if len(queries) else 0
        if over > referee.max_queries:  # a budget raised for a while and put back: the settings compare equal after
            v.append(f"spent {over} queries on a sample, over the budget of {referee.max_queries}")
        rows, q = self._rows, int(queries.sum())
        k = max(0, int(referee.confirm_repeats))
        if not (q <= rows <= q * (1 + k)):
            v.append(f"the victim evaluated {rows} rows for {q} reported queries")
        if v:
            raise RobenchError(f"attack '{self.attack_name}' tampered with the referee in batch {batch}: {'; '.join(v)}")


_MISSING = object()


def _code_objects() -> Dict[str, Any]:
    """{qualified name: (function, its code object)} of the referee's functions an attack could swap the code
    of in process: the independent check, the oracle's and the view's methods, the guard's own."""
    out: Dict[str, Any] = {}
    for f in (verify, drop):
        out[f.__qualname__] = (f, f.__code__)
    for cls in (Oracle, OracleView, Guard):
        for k, f in cls.__dict__.items():
            fn = getattr(f, "fget", f)
            if hasattr(fn, "__code__"):
                out[f"{cls.__name__}.{k}"] = (fn, fn.__code__)
    return out


def verify(model, res, x0: torch.Tensor, y: torch.Tensor, targets: Optional[torch.Tensor], referee, device,
           randomized: bool) -> List[int]:
    """Rows of a batch whose reported result the independent check refuses (see the module docstring).

    A success must be in [0, 1], inside the configured ball (up to tol) and adversarial on a fresh
    forward pass of ``model`` (``recheck_repeats`` passes: all of them for a deterministic victim, at
    least one for a randomized one, whose oracle already confirmed it); an adversarial point reported
    with distortions (not a success) must be in [0, 1] and, for a deterministic victim, adversarial.
    """
    claimed = res.success | res.adversarial
    sel = claimed.nonzero().flatten()
    if len(sel) == 0:
        return []
    xs = res.best_x[sel]
    lo, hi = referee.box
    in_box = ((xs >= lo - TOL) & (xs <= hi + TOL)).flatten(1).all(1)
    dist = distortion(xs - x0[sel], referee.norm)
    within = torch.ones_like(in_box) if referee.eps is None else dist <= referee.eps + TOL
    goal = (targets[sel] if targets is not None else y[sel])
    hits = torch.zeros(len(sel), dtype=torch.long)
    reps = max(1, int(referee.recheck_repeats))
    with torch.no_grad():
        for _ in range(reps):
            pred = model(xs.to(device)).argmax(1).cpu()
            hits += (pred == goal) if targets is not None else (pred != goal)
    adv = hits > 0 if randomized else hits == reps
    succ = res.success[sel]
    bad = torch.where(succ, ~(in_box & within & adv), ~(in_box & (adv | randomized)))
    return sel[bad].tolist()


def drop(fields: List[Dict[str, Any]], rows: List[int]) -> None:
    """Record fields of refused rows: no success, no distortion (the claim counts as a failed re-check)."""
    nan = float("nan")
    for j in rows:
        f = fields[j]
        f["recheck_failed"] = bool(f["success"] or f["recheck_failed"])
        f.update(success=False, queries_at_success=-1, l0=nan, l2=nan, linf=nan)
        for k in f:
            if k.startswith("dist_at_"):
                f[k] = nan


def summary_entry(violations: List[Dict[str, Any]], isolate: bool) -> Dict[str, Any]:
    """``summary.json``'s ``integrity``: the independent check's refusals (index, batch) and the mode."""
    return {"violations": violations, "n_dropped": len(violations), "isolate": bool(isolate)}
