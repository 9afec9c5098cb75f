"""The Python API: :func:`evaluate` any ``nn.Module`` with any registered attack, through the same
engine, oracle, protocols and result files as ``robench attack`` (README, "Python API").

>>> res = robench.evaluate(model, x, y, attack="square", budget=robench.Budget("linf", 0.3, max_queries=5000), seed=0)
>>> res.summary["robust_accuracy"], res.records.head(), res.adversarial.shape

With the same victim, slice, attack parameters, budget, seed and batch size, the records are those
``robench attack`` writes (time columns aside).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch
from omegaconf import OmegaConf
from torch import nn

from robench.domain import AUDIO, IMAGE, Domain
from robench.errors import InputError, RobenchError
from robench.evaluation.spec import Budget  # noqa: F401  (robench.Budget: the API's threat model)


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
    """``model((x - mean) / std)``: a model that expects normalized inputs, fed raw inputs (e.g. [0, 1] images)."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], channels: int, ndim: int = 4):
        super().__init__()
        try:
            m = torch.as_tensor(mean, dtype=torch.float32).flatten()
            s = torch.as_tensor(std, dtype=torch.float32).flatten()
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"evaluate: mean= and std= must be numbers or lists of numbers, got {mean!r} and {std!r}") from None
        for what, v in (("mean", m), ("std", s)):
            if len(v) not in (1, channels):
                raise InputError(f"evaluate: {what}= has {len(v)} values but the inputs have {channels} channel(s): "
                                 f"give one value per channel (or one for all)")
            if not bool(torch.isfinite(v).all()):
                raise InputError(f"evaluate: {what}= must be finite numbers, got {v.tolist()}")
        if bool((s <= 0).any()):
            raise InputError(f"evaluate: std= must be > 0 for every channel, got {s.tolist()}")
        self.model = model
        shape = (1, -1) + (1,) * (ndim - 2)
        self.register_buffer("mean", m.view(*shape))
        self.register_buffer("std", s.view(*shape))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _labels(y: Any, n: int) -> torch.Tensor:
    try:
        t = y if torch.is_tensor(y) else torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"evaluate: y must hold one integer class label per input, got {type(y).__name__} "
                         f"{str(y)[:40]!r}") from None
    if t.dim() != 1 or len(t) != n or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise InputError(f"evaluate: y must hold one integer label per input ({n}), got shape {tuple(t.shape)} {t.dtype}")
    return t.detach().cpu().long()


def _as_tensors(x, y, domain: Optional[Domain] = None):
    """(x, y, domain) from tensors, or from a DataLoader / iterable of (x, y) batches, checked: a non-empty
    batch of finite floating-point inputs in the domain's box, one integer label each."""
    if torch.is_tensor(x):
        if y is None:
            raise InputError("evaluate(model, x, y): labels y are missing (or pass an iterable of (x, y) batches as x)")
    else:
        if y is not None:
            raise InputError("evaluate: give either tensors x and y, or an iterable of (x, y) batches and no y")
        xs, ys = [], []
        try:
            for item in x:
                if not isinstance(item, (tuple, list)) or len(item) < 2:
                    raise InputError("evaluate: the iterable must yield (x, y) batches")
                xs.append(torch.as_tensor(item[0]))
                ys.append(_labels(item[1], len(xs[-1])))
        except TypeError:
            raise InputError(f"evaluate: x must be a tensor or an iterable of (x, y) batches, got {type(x).__name__}") from None
        if not xs:
            raise InputError("evaluate: the iterable of (x, y) batches is empty")
        try:
            x, y = torch.cat(xs), torch.cat(ys)
        except RuntimeError:
            raise InputError("evaluate: the batches of x have different shapes") from None
    if domain is None:
        domain = AUDIO if x.dim() == 3 else IMAGE
    if x.dim() != domain.ndim:
        raise InputError(f"evaluate: x must be a batch of {domain.describe()}, got shape {tuple(x.shape)}")
    if len(x) == 0:
        raise InputError("evaluate: x holds no inputs")
    if not x.is_floating_point():
        raise InputError(f"evaluate: x must be a floating-point tensor of {domain.describe()}, got {x.dtype}")
    return x.detach().cpu().float(), _labels(y, len(x)), domain


def _attack_of(attack, params: Dict[str, Any], isolate: bool):
    """(registered name, factory or None, traits or None) of ``attack``: a registered name (built by the run,
    in the sandbox under ``isolate``), a ``module:Class`` code reference, or an Attack instance (copied per run)."""
    from robench.attacks.base import Attack
    from robench.evaluation.spec import AttackTraits
    from robench.registry import ATTACKS

    if isinstance(attack, str):
        return attack, None, None  # a registered name, or a code reference "pkg.module:Class" / "file.py:Class"
    if isinstance(attack, Attack) or (hasattr(attack, "run") and hasattr(attack, "access")):
        if isolate:
            raise RobenchError("evaluate: isolate=True takes the attack by registered name or code reference "
                               "('pkg.module:Class' or 'file.py:Class'), so that its code runs in the sandbox only; "
                               "an Attack instance was already built in this process")
        if params:
            raise RobenchError(f"evaluate: attack parameters ({', '.join(params)}) go to the attack's constructor; "
                               f"with an Attack instance, set them when you build it")
        name = next((n for n in ATTACKS.names() if type(attack) is ATTACKS.get(n)), type(attack).__name__.lower())
        proto = copy.deepcopy(attack)
        return name, (lambda: copy.deepcopy(proto)), AttackTraits.of(proto, name)
    raise RobenchError(f"evaluate: attack must be a registered attack name or an Attack instance, got {type(attack).__name__}")


def evaluate(model: nn.Module, x, y=None, *, attack: Any = "pgd", budget: Optional[Budget] = None, seed: int = 0,
             targets: Any = None, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
             batch_size: Optional[int] = None, correct_only: bool = True, indices: Optional[Sequence[int]] = None,
             run_dir: Union[str, Path, None] = None, resume: bool = True, progress: bool = False, verbose: bool = False,
             device: Any = None, adaptive: bool = False, bpda: bool = False, eot_samples: int = 1,
             recheck_repeats: Optional[int] = None, confirm_on_sight: Optional[bool] = None,
             train_data=None, surrogate: Optional[nn.Module] = None, isolate: bool = False,
             domain: Optional[Domain] = None, save_adversarial: Union[bool, Sequence[str], None] = None,
             victim_speed: Optional[dict] = None, **attack_params) -> Result:
    """Attack ``model`` on ``(x, y)`` (or an iterable of ``(x, y)`` batches) and return a :class:`Result`.

    * ``model``: any ``nn.Module`` taking [0, 1] NCHW images (or, ``domain=robench.domain.AUDIO``, N x C x T
      signals in [-1, 1]; a 3-D ``x`` picks it) and returning logits, on any device (``device``: where to
      run, default the model's); ``mean``/``std`` wrap a model that expects normalized inputs. Input
      defenses: pass a victim from :func:`load_victim` with ``defense=``; ``adaptive``, ``bpda``,
      ``eot_samples`` as in the CLI ("Input defenses and adaptive evaluation"); ``isolate``: run the
      attack in a sandboxed child process that never holds the model (README, "Untrusted attacks").
    * ``attack``: a registered name (``robench.registry.ATTACKS.names()``) with its constructor
      arguments as ``**attack_params``, or an ``Attack`` instance.
    * ``budget``: a :class:`Budget`; ``targets``: a tensor of target classes, or a target mode
      (random, least_likely, a class index): a targeted run.
    * ``batch_size``: samples per oracle batch; None: the attack's configured default, the one
      ``robench attack`` uses, so the same seed gives the CLI's records.
    * ``run_dir``: writes config.yaml, records.csv (after every batch), progress.json, summary.json and
      summary.md as the CLI does, and each batch's adversarial examples (``adversarial/``, npz; read them with
      :func:`robench.load_adversarial`; ``save_adversarial=False`` skips them, ``["npz", "png"]`` adds
      PNG files); a folder holding the same settings resumes from its completed batches.
    * ``train_data``: a dataset of (image, label) pairs for attacks that draw target-class training
      images (targeted hard-label starts) and the build set of a shared perturbation (``uap``, ``patch``:
      ``build_split=train``); ``surrogate``: the model ``transfer`` crafts on.
    * ``victim_speed``: ``{"channels_last": True, "compile": True, "cudnn_benchmark": True}``, any of them:
      faster forward passes of ``model``, applied to it in place (:func:`robench.victim.speed_up`; off by default).
    Errors are :class:`~robench.errors.RobenchError` with the CLI's one-line messages (a failure of the
    model itself is chained as ``__cause__``).
    """
    import pandas as pd

    from robench.attacks.base import AttackContext, ClassImages
    from robench.config import resolve_device
    from robench.evaluation import results as R
    from robench.evaluation.folder import RunFolder
    from robench.evaluation.prepare import Slice, prepare_run
    from robench.evaluation.runner import ConsoleDisplay, Display, Runner
    from robench.evaluation.spec import RunSpec

    if not isinstance(model, nn.Module):
        raise InputError(f"evaluate: model must be a torch.nn.Module, got {type(model).__name__}")
    x, y, domain = _as_tensors(x, y, domain)
    save = _save_formats(save_adversarial)
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise RobenchError("evaluate: give both mean= and std= (the model's input normalization) or neither")
        model = Normalized(model, mean, std, channels=x.shape[1], ndim=x.dim())
    device = _device_of(model) if device is None else resolve_device(device)
    model = model.to(device).eval()
    from robench.victim import check_speed, speed_up

    speed = check_speed(victim_speed)  # before any work: a bad setting is one line
    model = speed_up(model, speed)
    name, factory, traits = _attack_of(attack, attack_params, bool(isolate))
    budget = budget if budget is not None else Budget()
    if not isinstance(budget, Budget):
        raise RobenchError(f"evaluate: budget must be a robench.Budget, got {type(budget).__name__}")
    given = None
    if targets is not None:
        if torch.is_tensor(targets) or isinstance(targets, (list, tuple)):
            given = _labels(targets, len(y))
            budget = dataclasses.replace(budget, targeted=True, target="given")
        else:
            budget = dataclasses.replace(budget, targeted=True, target=targets)
    meta_v = dict(getattr(model, "robench_meta", None) or getattr(getattr(model, "model", None), "robench_meta", None) or {})
    code = None
    if ":" in name:  # a code reference: the attack=external of the CLI (imported in the sandbox only under isolate)
        name, code = "external", name
        if batch_size is None:
            batch_size = 1000
    spec = RunSpec.create(name, attack_params, budget=budget, batch_size=batch_size, code=code, bpda=bpda, eot_samples=eot_samples,
                          seed=seed, correct_only=correct_only, adaptive=adaptive, recheck_repeats=recheck_repeats,
                          confirm_on_sight=confirm_on_sight, isolate=isolate,
                          defense=meta_v.get("defense_cfg", {"name": "none"}), traits=traits)
    idx = torch.arange(len(y)) if indices is None else _labels(indices, len(y)) if not isinstance(indices, int) else None
    if idx is None or len(idx) != len(y):
        raise InputError(f"evaluate: indices must give one index per input ({len(y)})")
    load_surrogate = None
    if surrogate is not None:
        load_surrogate = lambda spec_: (surrogate, "custom", None)  # noqa: E731
    context = AttackContext(device=device, class_images=None if train_data is None else ClassImages(train_data),
                            load_surrogate=load_surrogate)
    folder = None
    if run_dir is not None:
        settings = {"api": "robench.evaluate", "attack": {"name": name, "code": code, "params": dict(attack_params),
                                                          "batch_size": spec.attack.batch_size},
                    "budget": spec.budget.as_dict(), "seed": spec.seed, "correct_only": spec.correct_only,
                    "n_samples": len(y), "model": meta_v.get("model", type(model).__name__), "adaptive": spec.adaptive,
                    "bpda": spec.attack.bpda, "eot_samples": spec.attack.eot_samples,
                    "recheck_repeats": recheck_repeats, "confirm_on_sight": confirm_on_sight,
                    "targets": None if given is None else given.tolist()}
        if speed:  # part of the run's identity: a folder run at another setting is not resumed into
            settings["victim_speed"] = speed
        folder = RunFolder(run_dir, settings, resume=resume)
        done_summary, prior = folder.prior()
        if done_summary is not None:
            recs = R.read_records(folder.path / "records.csv")
            return Result(done_summary, pd.DataFrame(recs, columns=R.record_columns(recs)),
                          torch.full_like(x, float("nan")), folder.path, {})
    else:
        prior = []
    build_data = None  # a shared-perturbation attack builds on train_data (evaluation/protocols.py, Shared)
    if train_data is not None and spec.traits is not None and "build_set" in spec.traits.requires:
        import types

        build_data = types.SimpleNamespace(train=train_data, test=None)
    prep = prepare_run(spec, model, Slice(x, y, idx, domain=domain), device=device, context=context, targets=given,
                       splits=build_data,
                       make_attack=None if factory is None else _prepared(factory, context),
                       meta={"model": meta_v.get("model", type(model).__name__),
                             "dataset": meta_v.get("dataset", "tensors"), "checkpoint": meta_v.get("checkpoint")})
    try:
        if folder is not None:
            folder.accept()
        display = ConsoleDisplay(progress=progress, quiet=not verbose) if (progress or verbose) else Display()
        summary, records, best = Runner(prep, folder, display, save_adversarial=save).run(prior)
    finally:
        prep.close()
    return Result(summary, pd.DataFrame(records, columns=R.record_columns(records)), best,
                  None if folder is None else folder.path, dict(prep.evaluation.preflight))


def _save_formats(save_adversarial) -> tuple:
    from robench.evaluation.adversarial import FORMATS

    if save_adversarial is None or save_adversarial is True:
        return ("npz",)
    if save_adversarial is False:
        return ()
    save = tuple(save_adversarial) if isinstance(save_adversarial, (list, tuple)) else (save_adversarial,)
    if not save or any(f not in FORMATS for f in save):
        raise RobenchError(f"evaluate: save_adversarial must be True, False or a list of {', '.join(FORMATS)}, "
                           f"got {save_adversarial!r}")
    return save


def _prepared(factory, context):
    from robench.evaluation.engine import prepare_attack

    def build():
        a = factory()
        prepare_attack(a, context)
        return a
    return build


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
