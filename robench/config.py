"""Config validation: every bad value fails with one line that says how to fix it (exit code 2)."""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, List

import torch

from robench.errors import RobenchError

NORMS = ("linf", "l2")
TARGET_MODES = ("random", "least_likely")
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


def validate_budget(b: Any, num_classes: int | None) -> None:
    norm = b.get("norm")
    if norm not in NORMS:
        raise RobenchError(f"budget.norm must be one of {', '.join(NORMS)}, got '{norm}'")
    eps = b.get("eps")
    if eps is not None and (not _num(eps) or eps < 0):
        raise RobenchError(f"budget.eps must be a number >= 0 (or null for minimal-distortion attacks), got '{eps}'")
    mq = b.get("max_queries")
    if not isinstance(mq, int) or isinstance(mq, bool) or mq < 1:
        raise RobenchError(f"budget.max_queries must be an integer >= 1, got '{mq}'")
    if not isinstance(b.get("targeted"), bool):
        raise RobenchError(f"budget.targeted must be true or false, got '{b.get('targeted')}'")
    t = b.get("target")
    if isinstance(t, bool) or not (t in TARGET_MODES or isinstance(t, int)):
        raise RobenchError(f"budget.target must be random, least_likely or a class index, got '{t}'")
    if isinstance(t, int) and num_classes is not None and not 0 <= t < num_classes:
        raise RobenchError(f"budget.target={t} is out of range: this dataset has classes 0..{num_classes - 1}")
    cps = b.get("checkpoints")
    if cps is not None:
        ok = not isinstance(cps, (str, bytes)) and hasattr(cps, "__iter__") and len(list(cps)) > 0
        ok = ok and all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= mq for c in cps)
        if not ok:
            raise RobenchError(f"budget.checkpoints must be null or a list of query counts in 1..max_queries ({mq}), "
                               f"e.g. [4000,8000,14000]; got '{cps}'")


def validate_common(cfg: Any) -> None:
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise RobenchError(f"seed must be an integer >= 0, got '{seed}'")
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
