"""Config validation: every bad value fails with one line that says how to fix it (exit code 2)."""
from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any, List

import torch

from robench.errors import RobenchError
from robench.registry import config_dirs, configs_dir  # noqa: F401
from robench.values import MAX_INT, _int, _num, check_bool, check_choice, check_int, check_number, check_seed  # noqa: F401

GROUPS = ("dataset", "model", "attack", "defense", "budget")


def _register_resolvers() -> None:
    """``${robench_defense:${defense}}``: the defense's label (``none``, ``jpeg``, ``pgd_at+jpeg``) for run
    folder names; the ``defense`` node may have no ``name`` (input transformations only)."""
    from omegaconf import OmegaConf

    def label(node):
        from robench.defenses.compose import defense_label
        return defense_label(node)

    OmegaConf.register_new_resolver("robench_defense", label, replace=True)


_register_resolvers()


def group_options(group: str) -> List[str]:
    return sorted({p.stem for d in config_dirs() for p in (d / group).glob("*.yaml")})


def validate_budget(b: Any, num_classes: int | None) -> None:
    """A budget config node is a valid :class:`~robench.evaluation.spec.Budget` whose target class exists."""
    from robench.evaluation.spec import Budget

    Budget.from_mapping(b).check_classes(num_classes)


def validate_common(cfg: Any) -> None:
    check_seed(cfg.get("seed"))
    resolve_device(cfg.get("device", "auto"))


def validate_names(cfg: Any, groups=GROUPS) -> None:
    from robench.registry import REGISTRIES

    for g in groups:
        if g == "budget" or cfg.get(g) is None:
            continue
        name = (g == "model" and cfg[g].get("source")) or cfg[g].get("name")  # model sources: name is a label
        REGISTRIES[g + "s"].get(name)  # raises 'unknown <kind> ... valid: ...'


def resolve_device(spec: Any) -> torch.device:
    s = str(spec).lower()
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(s)
    except RuntimeError:
        raise RobenchError(f"device must be auto, cpu, cuda or cuda:N, got '{spec}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RobenchError(f"device={spec} but CUDA is not available here: use device=auto or device=cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise RobenchError(f"device must be auto, cpu, cuda or cuda:N, got '{spec}'")
    return dev


# ------------------------------------------------------------------ whole-config validation
# One entry point per command, called by the CLI before Hydra writes anything (on the composed
# config) and again at the start of the job (run.py: API callers and every job of a sweep). Every
# numeric setting of every group is checked: integers are integers, numbers are finite and in range,
# booleans are booleans, and plugin parameters match their declared schema (robench.registry).

def resolved(cfg: Any) -> dict:
    """The config as plain containers, interpolations resolved; an unresolvable one (an unset
    ``${oc.env:VAR}``, a missing key) fails in one line."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, dict):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        key = getattr(e, "full_key", None)
        raise RobenchError(f"cannot resolve {key or 'the config'}: {first}") from None


def _dataset(d: dict) -> None:
    if not isinstance(d, dict) or not isinstance(d.get("name"), str):
        raise RobenchError(f"dataset must be a dataset config with a name (e.g. dataset=mnist), got '{d}'")
    check_int("dataset.n_samples", d.get("n_samples"), lo=1, null=True, hint=" (null: the whole test split)")
    check_int("dataset.offset", d.get("offset", 0), lo=0)
    if d.get("num_classes") is not None:  # null: taken from the data (dataset=tensors, folder)
        check_int("dataset.num_classes", d["num_classes"], lo=2)
    for k in ("n_train", "image_size", "resize", "channels", "stats_samples"):
        if d.get(k) is not None:  # null: a source's default (folder/tensors: from the data)
            check_int(f"dataset.{k}", d[k], lo=1)
    if "split_seed" in d:
        check_int("dataset.split_seed", d["split_seed"], lo=0)
    if "download" in d:
        check_bool("dataset.download", d["download"])
    for k in ("source", "root", "split"):
        if k in d and not isinstance(d[k], str):
            raise RobenchError(f"dataset.{k} must be a string, got '{d[k]}'")
    from robench.data import parse_shard

    parse_shard(d.get("shard"))


def _model(m: dict) -> None:
    from robench.registry import MODELS, validate_params

    if not isinstance(m, dict) or not isinstance(m.get("name"), str):
        raise RobenchError(f"model must be a model config with a name (e.g. model=cw_mnist), got '{m}'")
    if m.get("source"):  # a model source (robench/models/sources.py): model.name is a label or zoo name and
        # model.params go to the user's own factory, which declares no schema; the source itself must exist
        MODELS.get(str(m["source"]))
        return
    validate_params(MODELS, m["name"], m.get("params"), "model", "model.params")


def _defense(d: Any, for_training: bool = False):
    from robench.defenses.compose import defense_spec
    from robench.registry import DEFENSES, instantiate

    spec = defense_spec(d)  # schema, then each constructor's own checks (constructors do no work)
    params = spec.recipe_params
    eps = (params or {}).get("eps")
    if not for_training and _num(eps) and eps == 0:
        # an attack at budget.eps=0 measures clean accuracy (Table 6.5's eps = 0 column): a recipe's training
        # eps, which defaults to budget.eps, plays no part at attack time, so its "> 0" check must not refuse it
        params = {k: v for k, v in params.items() if k != "eps"}
    instantiate(DEFENSES, spec.recipe, params, "defense", "defense.params")
    for name, params in spec.inputs:
        prefix = "defense.params" if (d or {}).get("name") == name else f"defense.input.{name}"
        instantiate(DEFENSES, name, params, "defense", prefix)
    if spec.detector:
        instantiate(DEFENSES, spec.detector[0], spec.detector[1], "defense", "defense.detector.params")
    if for_training and (spec.inputs or spec.detector):
        extra = ", ".join([n for n, _ in spec.inputs] + ([spec.detector[0]] if spec.detector else []))
        raise RobenchError(f"defense={spec.label}: {extra} act(s) at attack time, not in training; train the model "
                           f"behind it with defense={spec.recipe}")
    return spec


def check_defense_choice(value: Any) -> None:
    """``defense=[a,b,...]`` holds at most one training recipe (the checkpoint's): Hydra would merge
    two silently, the last one winning."""
    from robench.defenses.compose import _kind

    names = [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    recipes = [n for n in names if n in _registered_defenses() and _kind(n) == "train"]
    if len(recipes) > 1:
        raise RobenchError(f"defense=[{','.join(names)}] names {len(recipes)} training recipes ({', '.join(recipes)}); "
                           f"a victim has one: keep one recipe and add input transformations or a detector, "
                           f"e.g. defense=[{recipes[0]},jpeg]")


def _registered_defenses() -> List[str]:
    from robench.registry import DEFENSES

    return DEFENSES.names()


def _common(c: dict) -> None:
    validate_common(c)
    cd = c.get("checkpoint_dir", "checkpoints")
    if not isinstance(cd, str) or not cd.strip():
        raise RobenchError(f"checkpoint_dir must be a folder path, got '{cd}'")
    p = Path(cd)
    if p.exists() and not p.is_dir():
        raise RobenchError(f"checkpoint_dir={cd} is a file, not a folder")
    if p.is_dir() and not os.access(p, os.R_OK | os.X_OK):
        raise RobenchError(f"checkpoint_dir={cd} is not readable")
    for k in ("progress", "quiet"):
        if k in c:
            check_bool(k, c[k])


def validate_attack_config(cfg: Any) -> dict:
    """Every setting of a ``robench attack`` config, before any work; returns it resolved. The dataset,
    model and defense groups are checked here; the attack, the budget and the protocol options by
    :meth:`RunSpec.from_config <robench.evaluation.spec.RunSpec.from_config>` (the rules the Python API applies too)."""
    from robench.evaluation.spec import RunSpec

    c = resolved(cfg)
    _common(c)
    check_bool("resume", c.get("resume", True))
    check_bool("save_adversarial", c.get("save_adversarial", False))
    from robench.victim import check_speed

    check_speed(c.get("victim_speed"))
    fm = c.get("adversarial_formats", ["npz"])
    from robench.evaluation.adversarial import FORMATS

    if not isinstance(fm, list) or not fm or any(f not in FORMATS for f in fm):
        raise RobenchError(f"adversarial_formats must be a list of {', '.join(FORMATS)} (e.g. [npz,png]), got '{fm}'")
    _dataset(c.get("dataset"))
    _model(c.get("model"))
    RunSpec.from_config(c)
    validate_budget(c.get("budget") or {}, (c.get("dataset") or {}).get("num_classes"))
    _defense(c.get("defense"))
    return c


TRAIN_OPTIMIZERS = ("adam", "sgd")
TRAIN_SCHEDULES = ("none", "cosine", "step", "onecycle", "cyclic")


def validate_train_config(cfg: Any) -> dict:
    """Every setting of a ``robench train-defense`` config, before any work; returns it resolved."""
    from robench.registry import ATTACKS, validate_params

    c = resolved(cfg)
    _common(c)
    _dataset(c.get("dataset"))
    _model(c.get("model"))
    if c.get("budget") is not None:
        validate_budget(c["budget"], (c.get("dataset") or {}).get("num_classes"))
    _defense(c.get("defense"), for_training=True)
    t = c.get("train") or {}
    check_int("train.epochs", t.get("epochs", 1), lo=1)
    check_int("train.batch_size", t.get("batch_size", 1), lo=1)
    check_choice("train.optimizer", t.get("optimizer", "adam"), TRAIN_OPTIMIZERS)
    check_number("train.lr", t.get("lr", 1e-3), lo=0, lo_open=True)
    check_number("train.momentum", t.get("momentum", 0.0), lo=0, hi=1, hi_open=True)
    check_number("train.weight_decay", t.get("weight_decay", 0.0), lo=0)
    check_choice("train.schedule", t.get("schedule", "none"), TRAIN_SCHEDULES)
    check_number("train.cycle_peak", t.get("cycle_peak", 0.4), lo=0, hi=1, lo_open=True, hi_open=True)
    ms = t.get("milestones") or []
    if not isinstance(ms, list) or not all(_int(m) and m >= 1 for m in ms):
        raise RobenchError(f"train.milestones must be a list of epochs >= 1 (e.g. [5,8]), got '{ms}'")
    check_number("train.gamma", t.get("gamma", 0.1), lo=0, lo_open=True)
    io = t.get("init_from")
    if io is not None and not isinstance(io, str):
        raise RobenchError(f"train.init_from must be a defense name or null, got '{io}'")
    check_bool("train.amp", t.get("amp", "auto"), extra=("auto",))
    check_bool("train.channels_last", t.get("channels_last", "auto"), extra=("auto",))
    check_bool("train.resume", t.get("resume", True))
    e = c.get("eval") or {}
    if e:
        name = e.get("attack", "pgd")
        if not isinstance(name, str):
            raise RobenchError(f"eval.attack must be an attack name, got '{name}'")
        validate_params(ATTACKS, name, e.get("params"), "attack", "eval.params")
        check_int("eval.n_samples", e.get("n_samples", 500), lo=0, null=True,
                  hint=" (null: the whole test split; 0: skip the robust evaluation)")
        check_int("eval.batch_size", e.get("batch_size", 1000), lo=1)
    return c


def validate_slice(n_total: int, n_samples: Any, offset: Any) -> None:
    """The evaluation slice fits in the test split (``n_total`` images): no silently shorter slice."""
    from robench.data.base import eval_indices

    eval_indices(n_total, n_samples, offset, None)
