"""The Python API: :func:`evaluate` any ``nn.Module`` with any registered attack, through the same
engine, oracle, protocols and result files as ``robench attack`` (README, "Python API").

>>> res = robench.evaluate(model, x, y, attack="square", budget=robench.Budget("linf", 0.3, max_queries=5000), seed=0)
>>> res.summary["robust_accuracy"], res.records.head(), res.adversarial.shape

With the same victim, slice, attack parameters, budget, seed and batch size, the records are those
``robench attack`` writes (time columns aside).
"""
from __future__ import annotations

import copy
import datetime as _dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch
from omegaconf import OmegaConf
from torch import nn

from robench.errors import InputError, RobenchError


@dataclass(frozen=True)
class Budget:
    """The threat model: ``norm`` (linf, l2), ``eps`` (None: minimal-distortion attacks), ``max_queries``
    per sample, ``targeted`` and its ``target`` mode (random, least_likely or a class index),
    ``checkpoints`` (query counts of the anytime curve; None: the default for minimal-distortion attacks)."""

    norm: str = "linf"
    eps: Optional[float] = 0.3
    max_queries: int = 10_000
    targeted: bool = False
    target: Any = "random"
    checkpoints: Optional[Sequence[int]] = None

    def as_config(self):
        d = asdict(self)
        d["checkpoints"] = None if self.checkpoints is None else list(self.checkpoints)
        return OmegaConf.create(d)


@dataclass
class Result:
    """``summary``: the summary.json dictionary (same schema); ``records``: a DataFrame with the
    records.csv columns; ``adversarial``: each sample's best adversarial point (its clean image where the
    oracle saw none; NaN for batches restored from an earlier run in ``run_dir``)."""

    summary: Dict[str, Any]
    records: Any
    adversarial: torch.Tensor
    run_dir: Optional[Path] = None
    preflight: Dict[str, Any] = field(default_factory=dict)


class Normalized(nn.Module):
    """``model((x - mean) / std)``: a model that expects normalized inputs, fed [0, 1] images."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _as_tensors(x, y):
    """(x, y) tensors from tensors, or from a DataLoader / iterable of (x, y) batches."""
    if torch.is_tensor(x):
        if y is None:
            raise InputError("evaluate(model, x, y): labels y are missing (or pass an iterable of (x, y) batches as x)")
        y = torch.as_tensor(y)
    else:
        if y is not None:
            raise InputError("evaluate: give either tensors x and y, or an iterable of (x, y) batches and no y")
        xs, ys = [], []
        for item in x:
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise InputError("evaluate: the iterable must yield (x, y) batches")
            xs.append(torch.as_tensor(item[0]))
            ys.append(torch.as_tensor(item[1]))
        if not xs:
            raise InputError("evaluate: the iterable of (x, y) batches is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    if x.dim() != 4:
        raise InputError(f"evaluate: x must be a batch of images N x C x H x W, got shape {tuple(x.shape)}")
    if y.dim() != 1 or len(y) != len(x) or y.dtype in (torch.float16, torch.float32, torch.float64, torch.bool):
        raise InputError(f"evaluate: y must hold one integer label per image ({len(x)}), got shape {tuple(y.shape)} {y.dtype}")
    return x.detach().cpu().float(), y.detach().cpu().long()


def _attack_of(attack, params: Dict[str, Any]):
    from robench.attacks.base import Attack
    from robench.registry import ATTACKS, instantiate

    if isinstance(attack, str):
        return attack, (lambda: instantiate(ATTACKS, attack, dict(params), "attack"))
    if isinstance(attack, Attack) or (hasattr(attack, "run") and hasattr(attack, "access")):
        if params:
            raise RobenchError(f"evaluate: attack parameters ({', '.join(params)}) go to the attack's constructor; "
                               f"with an Attack instance, set them when you build it")
        name = next((n for n in ATTACKS.names() if type(attack) is ATTACKS.get(n)), type(attack).__name__.lower())
        proto = copy.deepcopy(attack)
        return name, (lambda: copy.deepcopy(proto))
    raise RobenchError(f"evaluate: attack must be a registered attack name or an Attack instance, got {type(attack).__name__}")


def evaluate(model: nn.Module, x, y=None, *, attack: Any = "pgd", budget: Optional[Budget] = None, seed: int = 0,
             targets: Any = None, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
             batch_size: int = 1000, correct_only: bool = True, indices: Optional[Sequence[int]] = None,
             run_dir: Union[str, Path, None] = None, resume: bool = True, progress: bool = False, verbose: bool = False,
             device: Any = None, adaptive: bool = False, bpda: bool = False, eot_samples: int = 1,
             recheck_repeats: Optional[int] = None, confirm_on_sight: Optional[bool] = None,
             train_data=None, surrogate: Optional[nn.Module] = None, isolate: bool = False, **attack_params) -> Result:
    """Attack ``model`` on ``(x, y)`` (or an iterable of ``(x, y)`` batches) and return a :class:`Result`.

    * ``model``: any ``nn.Module`` taking [0, 1] NCHW images and returning logits, on any device
      (``device``: where to run, default the model's); ``mean``/``std`` wrap a model that expects
      normalized inputs. Input defenses: pass a victim from :func:`load_victim` with ``defense=``;
      ``adaptive``, ``bpda``, ``eot_samples`` as in the CLI ("Input defenses and adaptive evaluation");
      ``isolate``: run the attack in a child process that never holds the model (README, "Untrusted attacks").
    * ``attack``: a registered name (``robench.registry.ATTACKS.names()``) with its constructor
      arguments as ``**attack_params``, or an ``Attack`` instance.
    * ``budget``: a :class:`Budget`; ``targets``: a tensor of target classes, or a target mode
      (random, least_likely, a class index): a targeted run.
    * ``run_dir``: writes config.yaml, records.csv (after every batch), progress.json, summary.json and
      summary.md as the CLI does; a folder holding the same settings resumes from its completed batches.
    * ``train_data``: a dataset of (image, label) pairs for attacks that draw target-class training
      images (targeted hard-label starts); ``surrogate``: the model ``transfer`` crafts on.
    Errors are :class:`~robench.errors.RobenchError` with the CLI's one-line messages.
    """
    import pandas as pd

    from robench.evaluation import results as R
    from robench.attacks.base import AttackContext, ClassImages
    from robench.config import resolve_device, validate_budget
    from robench.evaluation.engine import Plan, Referee, choose_targets, prepare_attack
    from robench.evaluation.protocols import Evaluation
    from robench.evaluation.runner import prior_run, run_plan
    from robench.victim import check_inputs

    if not isinstance(model, nn.Module):
        raise InputError(f"evaluate: model must be a torch.nn.Module, got {type(model).__name__}")
    budget = budget or Budget()
    if not isinstance(budget, Budget):
        raise RobenchError(f"evaluate: budget must be a robench.Budget, got {type(budget).__name__}")
    x, y = _as_tensors(x, y)
    check_inputs(x, "evaluate: x")
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise RobenchError("evaluate: give both mean= and std= (the model's input normalization) or neither")
        model = Normalized(model, mean, std)
    device = _device_of(model) if device is None else resolve_device(device)
    model = model.to(device).eval()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise RobenchError(f"attack.batch_size must be >= 1, got {batch_size}")
    name, make_attack = _attack_of(attack, attack_params)
    atk = make_attack()
    bcfg = budget.as_config()
    if targets is not None and not torch.is_tensor(targets):
        bcfg.targeted, bcfg.target = True, targets
    elif targets is not None:
        bcfg.targeted, bcfg.target = True, "given"
    with torch.no_grad():  # the clean predictions, batched as robench.training.loop.predict does (any module, with or without parameters)
        logits = torch.cat([model(x[s:s + 500].to(device)) for s in range(0, len(x), 500)]).float().cpu()
    num_classes = int(logits.shape[1])
    validate_budget(bcfg if bcfg.target != "given" else OmegaConf.merge(bcfg, {"target": "random"}), num_classes)
    meta_v = dict(getattr(model, "robench_meta", None) or getattr(getattr(model, "model", None), "robench_meta", None) or {})
    dname = meta_v.get("defense", "none")
    cfg = OmegaConf.create({"defense": meta_v.get("defense_cfg", {"name": "none"}), "seed": int(seed), "adaptive": bool(adaptive),
                            "adaptive_eot_samples": 10, "recheck_repeats": recheck_repeats, "confirm_on_sight": confirm_on_sight})
    ev = Evaluation(cfg)
    ev.prepare(model, atk, {"bpda": bpda, "eot_samples": eot_samples}, None, x)  # pre-flight checks included
    pf = dict(ev.preflight)
    load_surrogate = None
    if surrogate is not None:
        load_surrogate = lambda spec: (surrogate, "custom", None)  # noqa: E731
    context = AttackContext(device=device, class_images=None if train_data is None else ClassImages(train_data),
                            load_surrogate=load_surrogate)
    prepare_attack(atk, context)
    clean_pred = logits.argmax(1)
    if torch.is_tensor(targets):
        t = torch.as_tensor(targets).long().cpu()
        if t.shape != y.shape or int(t.min()) < 0 or int(t.max()) >= num_classes:
            raise InputError(f"evaluate: targets must hold one class in 0..{num_classes - 1} per image")
    elif bcfg.targeted:
        t = choose_targets(bcfg.target, y, logits, num_classes, torch.Generator().manual_seed(int(seed)))
    else:
        t = None
    attacked = (clean_pred == y) if correct_only else torch.ones_like(y, dtype=torch.bool)
    if t is not None:
        attacked &= t != y
    plan = Plan.contiguous(x, y, t, attacked, batch_size, int(seed))
    cps = sorted({int(c) for c in bcfg.checkpoints}) if bcfg.checkpoints is not None else (
        R.default_checkpoints(int(bcfg.max_queries)) if atk.minimizes_distortion else [])
    referee = Referee(access=atk.access, norm=bcfg.norm, eps=bcfg.eps, max_queries=int(bcfg.max_queries),
                      num_classes=num_classes, stop_on_success=not atk.minimizes_distortion,
                      recheck_repeats=ev.recheck_repeats, confirm_repeats=ev.confirm_repeats,
                      eot_samples=ev.eot_samples, checkpoints=tuple(cps))
    idx = torch.arange(len(y)) if indices is None else torch.as_tensor(list(indices)).long()
    if len(idx) != len(y):
        raise InputError(f"evaluate: indices must give one index per image ({len(y)}), got {len(idx)}")
    rd, prior = (Path(run_dir), []) if run_dir is not None else (None, [])
    if rd is not None:
        settings = {"api": "robench.evaluate", "attack": {"name": name, "params": dict(attack_params), "batch_size": batch_size},
                    "budget": OmegaConf.to_container(bcfg), "seed": int(seed), "correct_only": bool(correct_only),
                    "n_samples": len(y), "model": meta_v.get("model", type(model).__name__), "adaptive": bool(adaptive),
                    "bpda": bool(bpda), "eot_samples": int(eot_samples), "recheck_repeats": recheck_repeats,
                    "confirm_on_sight": confirm_on_sight, "targets": None if t is None else t.tolist()}
        done_summary, prior = prior_run(rd, settings, resume)
        if done_summary is not None:
            recs = R.read_records(rd / "records.csv")
            return Result(done_summary, pd.DataFrame(recs, columns=R.record_columns(recs)),
                          torch.full_like(x, float("nan")), rd, pf)
        R.atomic_write_text(rd / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(settings)))
    meta = {"attack": name, "model": meta_v.get("model", type(model).__name__), "dataset": meta_v.get("dataset", "tensors"),
            "defense": dname, "targeted": t is not None, "target": (bcfg.target if t is not None else None),
            "seed": int(seed), "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "checkpoint": meta_v.get("checkpoint"), "shard": None}

    def fresh():
        a = make_attack()
        prepare_attack(a, context)
        return a

    summary, records, best = run_plan(atk, fresh, model, plan, idx, clean_pred, referee, ev, device, meta, run_dir=rd,
                                      prior_records=prior, batch_size=batch_size, progress=progress, quiet=not verbose,
                                      announce=verbose, isolate=bool(isolate))
    return Result(summary, pd.DataFrame(records, columns=R.record_columns(records)), best, rd, pf)


def _compose(overrides: List[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from robench.config import configs_dir

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(configs_dir())):
            return compose("run_attack", overrides=overrides)
    except HydraException as e:
        raise RobenchError(str(e).splitlines()[0]) from None


def _group(name: str, value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"{name}=[{','.join(map(str, value))}]"
    return f"{name}={value}"


def load_victim(dataset: str = "mnist", model: str = "cw_mnist", defense: Any = "none", *,
                checkpoint_dir: Union[str, Path] = "checkpoints", device: Any = "cpu", overrides: Sequence[str] = ()) -> nn.Module:
    """The CLI's victim for (dataset, model, defense): the model with its recipe's checkpoint under
    ``checkpoint_dir``, behind the defense's input transformations, in eval mode. ``defense`` is a name or
    a list (``["none", "jpeg"]``); ``overrides``: further Hydra overrides (``"model.params.width=32"``).
    A missing checkpoint fails in one line naming the command that makes it."""
    from robench.config import resolve_device, validate_names
    from robench.data import load_dataset
    from robench.victim import load_victim as _load

    cfg = _compose([_group("dataset", dataset), _group("model", model), _group("defense", defense),
                    f"checkpoint_dir={checkpoint_dir}", *overrides])
    validate_names(cfg, ("dataset", "model"))
    from robench.defenses.compose import defense_spec

    spec = defense_spec(cfg.defense)
    if spec.detector:
        raise RobenchError(f"load_victim: the detector '{spec.detector[0]}' is not part of the victim; run detection with `robench attack`")
    splits = load_dataset(cfg.dataset)
    victim, meta = _load(cfg, splits, resolve_device(device))
    victim.robench_meta = {"dataset": cfg.dataset.name, "model": cfg.model.name, "defense": spec.label,
                           "defense_cfg": OmegaConf.to_container(cfg.defense, resolve=True),
                           "checkpoint": meta.get("path", meta.get("source"))}
    return victim


def load_data(dataset: str = "mnist", n_samples: Optional[int] = None, offset: int = 0, *, split: str = "test",
              shard: Optional[str] = None, overrides: Sequence[str] = ()):
    """(x, y) of the CLI's evaluation slice: test images ``[offset, offset + n_samples)`` (shard ``i/n``), as
    ``dataset.n_samples`` / ``dataset.offset`` / ``dataset.shard`` select them; ``split="train"``: the training images."""
    from robench.data import eval_slice, load_dataset

    cfg = _compose([_group("dataset", dataset), *overrides])
    splits = load_dataset(cfg.dataset)
    if split == "test":
        _, x, y = eval_slice(splits, n_samples, int(offset), shard)
        return x, y
    if split == "train":
        ds = splits.train
        end = len(ds) if n_samples is None else min(len(ds), int(offset) + int(n_samples))
        xs, ys = zip(*(ds[i][:2] for i in range(int(offset), end)))
        return torch.stack(xs).float(), torch.as_tensor(ys, dtype=torch.long)
    raise RobenchError(f"load_data: split must be 'test' or 'train', got '{split}'")
