"""Config validation: every bad value fails with one line that says how to fix it (exit code 2)."""
from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any, List

import torch

from robench.errors import RobenchError

NORMS = ("linf", "l2")
TARGET_MODES = ("random", "least_likely", "all")
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


def configs_dir() -> Path:
    """The config folder shipped inside the package (``robench/configs``, mapped from ``configs/``)."""
    import robench.configs as c

    return Path(c.__file__).parent


def config_dirs() -> List[Path]:
    """robench's own config folder, then those of entry-point plugins that ship one."""
    from robench.registry import PLUGIN_CONFIG_DIRS, load_plugins

    load_plugins()
    return [configs_dir()] + [d for _, d in PLUGIN_CONFIG_DIRS]


def group_options(group: str) -> List[str]:
    return sorted({p.stem for d in config_dirs() for p in (d / group).glob("*.yaml")})


def _num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


#: the largest integer a count may take (seeds, query budgets, sizes): torch and numpy keep them in 64 bits
MAX_INT = 2 ** 62


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_int(key: str, v: Any, lo: int = 0, hi: int = MAX_INT, null: bool = False, hint: str = "") -> None:
    """An integer (not 1.5, not true, not 'abc') in [lo, hi], or null when ``null``."""
    if v is None and null:
        return
    if not _int(v) or not lo <= v <= hi:
        rng = f">= {lo}" if hi == MAX_INT else f"in {lo}..{hi}"
        raise RobenchError(f"{key} must be an integer {rng}{' or null' if null else ''}{hint}, got '{v}'")


def check_number(key: str, v: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                 hi_open: bool = False, null: bool = False, hint: str = "") -> None:
    """A finite number (not nan, not inf, not 'abc', not true) in the given bounds, or null when ``null``."""
    import math

    if v is None and null:
        return
    ok = _num(v) and math.isfinite(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        parts = ([f"{'>' if lo_open else '>='} {lo}"] if lo is not None else []) + \
                ([f"{'<' if hi_open else '<='} {hi}"] if hi is not None else [])
        raise RobenchError(f"{key} must be a finite number{' ' + ' and '.join(parts) if parts else ''}"
                           f"{' or null' if null else ''}{hint}, got '{v}'")


def check_bool(key: str, v: Any, null: bool = False, extra: tuple = ()) -> None:
    if isinstance(v, bool) or (v is None and null) or v in extra:
        return
    words = ["true", "false"] + [str(e) for e in extra] + (["null"] if null else [])
    raise RobenchError(f"{key} must be {', '.join(words[:-1])} or {words[-1]}, got '{v}'")


def check_choice(key: str, v: Any, choices: tuple) -> None:
    if not isinstance(v, str) or v not in choices:
        raise RobenchError(f"{key} must be one of {', '.join(choices)}, got '{v}'")


def validate_budget(b: Any, num_classes: int | None) -> None:
    norm = b.get("norm")
    if norm not in NORMS:
        raise RobenchError(f"budget.norm must be one of {', '.join(NORMS)}, got '{norm}'")
    eps = b.get("eps")
    import math
    if eps is not None and (not _num(eps) or not math.isfinite(eps) or eps < 0):
        raise RobenchError(f"budget.eps must be a number >= 0 (or null for minimal-distortion attacks), got '{eps}'")
    mq = b.get("max_queries")
    if not _int(mq) or not 1 <= mq <= MAX_INT:
        raise RobenchError(f"budget.max_queries must be an integer >= 1 (at most 2**62), got '{mq}'")
    if not isinstance(b.get("targeted"), bool):
        raise RobenchError(f"budget.targeted must be true or false, got '{b.get('targeted')}'")
    t = b.get("target")
    if isinstance(t, bool) or not (t in TARGET_MODES or isinstance(t, int)):
        raise RobenchError(f"budget.target must be random, least_likely, all or a class index, got '{t}'")
    if isinstance(t, int) and (t < 0 or (num_classes is not None and not 0 <= t < num_classes)):
        top = f"0..{num_classes - 1}" if num_classes is not None else "0 and up"
        raise RobenchError(f"budget.target={t} is out of range: this dataset has classes {top}")
    cps = b.get("checkpoints")
    if cps is not None:
        ok = not isinstance(cps, (str, bytes)) and hasattr(cps, "__iter__") and len(list(cps)) > 0
        ok = ok and all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= mq for c in cps)
        if not ok:
            raise RobenchError(f"budget.checkpoints must be null or a list of query counts in 1..max_queries ({mq}), "
                               f"e.g. [4000,8000,14000]; got '{cps}'")


def validate_common(cfg: Any) -> None:
    seed = cfg.get("seed")
    if not _int(seed) or not 0 <= seed < 2 ** 63:
        raise RobenchError(f"seed must be an integer in 0..2**63-1, got '{seed}'")
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
    """Every setting of a ``robench attack`` config, before any work; returns it resolved."""
    from robench.registry import ATTACKS, instantiate

    c = resolved(cfg)
    _common(c)
    for k in ("correct_only", "adaptive", "resume", "isolate"):
        if k in c:
            check_bool(k, c[k])
    check_bool("confirm_on_sight", c.get("confirm_on_sight"), null=True)
    check_int("n_correct", c.get("n_correct"), lo=1, null=True)
    check_int("recheck_repeats", c.get("recheck_repeats"), lo=1, null=True,
              hint=" (null: 3 for a randomized defense, else 1)")
    check_int("adaptive_eot_samples", c.get("adaptive_eot_samples", 10), lo=1)
    _dataset(c.get("dataset"))
    _model(c.get("model"))
    validate_budget(c.get("budget") or {}, (c.get("dataset") or {}).get("num_classes"))
    a = c.get("attack")
    if not isinstance(a, dict) or not isinstance(a.get("name"), str):
        raise RobenchError(f"attack must be an attack config with a name (e.g. attack=pgd), got '{a}'")
    check_int("attack.batch_size", a.get("batch_size", 1000), lo=1)
    check_int("attack.eot_samples", a.get("eot_samples", 1), lo=1)
    check_bool("attack.bpda", a.get("bpda", False))
    instantiate(ATTACKS, a["name"], a.get("params"), "attack", "attack.params")  # schema, then the constructor's own checks
    _defense(c.get("defense"))
    if c.get("n_correct") is not None and (c.get("dataset") or {}).get("shard"):
        raise RobenchError("n_correct cuts the slice after its n-th correct sample and cannot be combined with "
                           "dataset.shard: use dataset.n_samples with shards")
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
