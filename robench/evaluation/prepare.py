"""One way to prepare a run: :func:`prepare_run` turns a validated :class:`~robench.evaluation.spec.RunSpec`,
a victim and a slice of data into a :class:`PreparedRun` (the attack, the plan, the referee and the
evaluation protocols), for ``robench attack``, :func:`robench.evaluate` and the end-of-training
evaluation alike (DESIGN.md, "Data flow").

Everything here checks and computes; nothing is written. A refusal (a victim returning NaN logits,
labels outside its classes, a gradient attack on a victim without gradients, an isolated attack whose
declarations do not fit the budget) is a one-line :class:`~robench.errors.RobenchError` before the run
folder is touched.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from robench.domain import IMAGE, Domain
from robench.errors import InputError, RobenchError
from robench.evaluation import results as R
from robench.evaluation.engine import Plan, Referee, choose_targets, expand_all_targets
from robench.evaluation.protocols import Evaluation, Shared
from robench.evaluation.spec import RunSpec


@dataclass
class Slice:
    """The samples of a run: images ``x`` and labels ``y`` (CPU), their dataset ``indices`` (the records'
    ``index``), their ``positions`` in the unsharded slice (batch b holds positions [b*B, (b+1)*B);
    random targets are drawn for all ``n_slice`` positions) and the input ``domain``."""

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    positions: Optional[torch.Tensor] = None
    n_slice: Optional[int] = None
    domain: Domain = IMAGE

    def __post_init__(self):
        if self.positions is None:
            self.positions = torch.arange(len(self.y))
        if self.n_slice is None:
            self.n_slice = len(self.y)

    def cut(self, n: int) -> None:
        """Keep the first ``n`` samples (``n_correct``)."""
        self.x, self.y, self.indices, self.positions = self.x[:n], self.y[:n], self.indices[:n], self.positions[:n]
        self.n_slice = n


@dataclass
class PreparedRun:
    """Everything the runner needs, checked: the attack (and a factory of fresh, prepared instances for a
    protocol's extra run), the victim and device, the plan, the referee, the protocols, each row's
    dataset index and clean prediction, and the summary's descriptive keys (``meta``)."""

    spec: RunSpec
    attack: Any
    make_attack: Callable[[], Any]
    model: nn.Module
    device: torch.device
    plan: Plan
    referee: Referee
    evaluation: Evaluation
    indices: torch.Tensor
    clean_pred: torch.Tensor
    domain: Domain
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.meta.get("attack") or self.spec.attack.label

    def close(self) -> None:
        """Release what the attack holds (an isolated attack's sandbox)."""
        close = getattr(self.attack, "close", None)
        if callable(close):
            close()


def now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def clean_logits(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 500) -> torch.Tensor:
    """The victim's logits on the clean inputs (CPU, float), batched as robench.training.loop.predict does;
    a victim that raises, returns something other than one row of finite float logits per input, or
    fewer than 2 classes, is refused in one line (its own exception chained as ``__cause__``)."""
    outs = []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size].to(device)
            try:
                out = model(xb)
            except RobenchError:
                raise
            except Exception as e:  # the caller's model: its own error, in one line, chained
                first = (str(e).strip().splitlines() or [""])[0][:200]
                raise RobenchError(f"the model raised {type(e).__name__} on the clean inputs (batch of shape "
                                   f"{tuple(xb.shape)}): {first}") from e
            if not torch.is_tensor(out):
                raise RobenchError(f"the model returned a {type(out).__name__}, not a tensor of logits")
            if out.dim() != 2 or out.shape[0] != xb.shape[0]:
                raise RobenchError(f"the model returned shape {tuple(out.shape)} for {xb.shape[0]} inputs: it must "
                                   f"return one row of logits per input (N x num_classes)")
            if not out.is_floating_point():
                raise RobenchError(f"the model returned {out.dtype} outputs: logits must be floating point")
            outs.append(out.float().cpu())
    logits = torch.cat(outs)
    if logits.shape[1] < 2:
        raise RobenchError(f"the model returns {logits.shape[1]} logit(s) per input: a classifier needs at least 2 classes")
    bad = ~torch.isfinite(logits).all(1)
    if bool(bad.any()):
        raise RobenchError(f"the model returned non-finite logits (NaN or inf) for {int(bad.sum())} of {len(x)} clean "
                           f"inputs: check its weights and normalisation (a std of 0?)")
    return logits


def check_labels(y: torch.Tensor, num_classes: int, what: str = "labels") -> None:
    """Every label is a class of the victim (0..num_classes-1)."""
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(f"{what} must be classes 0..{num_classes - 1} of the model, found "
                         f"{int(y.min())}..{int(y.max())}")


def prepare_run(spec: RunSpec, model: nn.Module, data: Slice, *, device: torch.device,
                num_classes: Optional[int] = None, splits: Any = None, context: Any = None,
                targets: Optional[torch.Tensor] = None, meta: Optional[Dict[str, Any]] = None,
                make_attack: Optional[Callable[[], Any]] = None) -> PreparedRun:
    """Check the victim on the slice and assemble the run (nothing written).

    ``num_classes``: the dataset's class count (None: the width of the victim's logits); ``splits``:
    the dataset (detector calibration); ``context``: the :class:`~robench.attacks.base.AttackContext`
    the attack may declare needs from; ``targets``: explicit target classes (a targeted run whose
    ``budget.target`` is ``given``); ``make_attack``: builds the attack object (default: the registry, or
    the sandboxed child under ``isolate``)."""
    from robench.attacks.base import AttackContext
    from robench.evaluation.attack_factory import attack_factory
    from robench.victim import check_inputs, refuse_gradients

    check_inputs(data.x, "inputs", data.domain)  # finite, inside the domain's box: the one check for every run
    b = spec.budget
    name = spec.attack.label
    context = context or AttackContext(device=device)
    factory = make_attack or attack_factory(spec, context)
    attack = factory()  # an isolated attack starts its sandbox here; its declared traits come back with it
    try:
        traits = spec.traits if spec.traits is not None else attack.traits
        if spec.traits is None:  # an isolated external attack: its declarations, checked as a registered one's
            traits.check(b, name, spec.isolate)
        traits.check_layout(data.domain.layout, name)
        refuse_gradients(model, traits.access, name)
        logits = clean_logits(model, data.x, device)
        k = int(logits.shape[1])
        if num_classes is not None and k != num_classes:
            raise RobenchError(f"the model returns {k} logits but the dataset has {num_classes} classes")
        check_labels(data.y, k)
        b.check_classes(k)
        clean_pred = logits.argmax(1)
        if spec.n_correct is not None:  # the slice ends at its n-th originally-correct sample
            cut = prefix_with_n_correct(clean_pred == data.y, spec.n_correct)
            data.cut(cut)
            logits, clean_pred = logits[:cut], clean_pred[:cut]
        t = None
        if targets is not None:
            t = torch.as_tensor(targets).long().cpu()
            if t.shape != data.y.shape:
                raise InputError(f"targets must hold one class per sample ({len(data.y)}), got shape {tuple(t.shape)}")
            check_labels(t, k, "targets")
        elif b.targeted and b.target == "all":  # every (sample, other class) pair: k - 1 rows per sample
            t, data.positions, data.y, data.indices, data.x, logits, clean_pred = expand_all_targets(
                k, data.positions, data.y, data.indices, data.x, logits, clean_pred)
            data.n_slice *= k - 1
        elif b.targeted:
            t = choose_targets(b.target, data.y, logits, k, torch.Generator().manual_seed(spec.seed), data.positions,
                               data.n_slice)
        attacked = (clean_pred == data.y) if spec.correct_only else torch.ones_like(data.y, dtype=torch.bool)
        if t is not None:
            attacked &= t != data.y  # a target equal to the label is no attack at all
        plan = Plan(data.x, data.y, t, attacked, (data.positions // spec.attack.batch_size).tolist(), spec.seed)
        ev = Evaluation(spec.defense, seed=spec.seed, adaptive=spec.adaptive,
                        adaptive_eot_samples=spec.adaptive_eot_samples, recheck_repeats=spec.recheck_repeats,
                        confirm_on_sight=spec.confirm_on_sight)
        ev.prepare(model, traits.access, spec.attack.bpda, spec.attack.eot_samples, splits, data.x,
                   for_victim=getattr(attack, "for_victim", None))
        cps = b.checkpoints if b.checkpoints is not None else (
            tuple(R.default_checkpoints(b.max_queries)) if traits.minimizes_distortion else ())
        referee = Referee(access=traits.access.value, norm=b.norm.value, eps=b.eps, max_queries=b.max_queries,
                          num_classes=k, stop_on_success=not traits.minimizes_distortion,
                          recheck_repeats=ev.recheck_repeats, confirm_repeats=ev.confirm_repeats,
                          eot_samples=ev.eot_samples, checkpoints=tuple(cps), box=data.domain.box)
        if "build_set" in traits.requires:  # one perturbation for every sample: the shared protocol
            attack = Shared.attach(ev, spec, attack, model, device, data, splits, referee, name)
    except BaseException:
        close = getattr(attack, "close", None)
        if callable(close):
            close()
        raise

    def fresh():  # a protocol's extra run gets its own instance, prepared like the main one
        return attack if "build_set" in traits.requires else factory()  # a shared perturbation stays the one built

    m = {"attack": name, "model": "model", "dataset": "tensors", "defense": ev.label, "targeted": t is not None,
         "target": (b.target if t is not None else None), "seed": spec.seed, "started": now(), "checkpoint": None,
         "shard": spec.shard, **(meta or {})}
    m["defense"] = ev.label
    return PreparedRun(spec, attack, fresh, model, device, plan, referee, ev, data.indices, clean_pred, data.domain, m)


def prefix_with_n_correct(correct: torch.Tensor, n: int) -> int:
    """Length of the shortest prefix holding ``n`` originally-correct samples (all of it if it has fewer)."""
    pos = correct.nonzero().flatten()
    return int(pos[n - 1]) + 1 if len(pos) >= n else len(correct)
