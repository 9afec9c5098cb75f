"""Run folders: what robench writes in one, whether a path can hold a run, and the overrides that made it.

robench writes ``config.yaml`` and ``overrides.yaml`` itself, only once a run has been accepted (Hydra
writes no ``.hydra/``: ``hydra.output_subdir: null``), so a refused command leaves an existing run
folder byte-identical and ``robench report`` shows each run's own overrides.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from robench.errors import RobenchError


#: what robench (and older robench versions, through Hydra) writes in a run folder: a folder that
#: holds anything else is not a robench run folder and is refused as one
RUN_FOLDER_NAMES = {".hydra", "config.yaml", "overrides.yaml", "records.csv", "progress.json", "summary.json",
                    "summary.md", "train_log.csv", "attack.log", "train-defense.log"}

#: override keys that never distinguish what a run computes (not shown by ``robench report``)
IGNORED_OVERRIDES = ("progress=", "quiet=", "resume=", "launcher=", "hydra.")


def check_output_dir(path: str, key: str) -> Path:
    """``path`` can hold a run: not a file, and the nearest existing folder on the way is writable
    (checked by creating and removing a temporary file there; nothing is left behind)."""
    import tempfile

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise RobenchError(f"{key}={path} is a file, not a folder: pick a folder path")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise RobenchError(f"{key}={path} cannot be created: {probe} is a file")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise RobenchError(f"{key}={path} is not writable ({e.strerror or e.__class__.__name__} in {probe})") from None
    return p


def check_run_dir(path: str, cfg_plain: Dict[str, Any], resume: bool = True) -> Path:
    """Before anything is written: ``path`` can take this run. It is a new or empty folder, a robench
    run folder of this same config (resume), or (``resume=False``) a robench run folder to overwrite;
    an unrelated folder or a run of another config is refused, in one line, and left untouched."""
    import yaml

    from robench.evaluation.results import config_differences

    p = check_output_dir(path, "hydra.run.dir")
    if not p.is_dir():
        return p
    names = {q.name for q in p.iterdir()}
    if not names:
        return p
    foreign = sorted(n for n in names - RUN_FOLDER_NAMES if not n.startswith((".config.yaml.tmp", ".records.csv.tmp")))
    if "config.yaml" not in names and (foreign or not names <= RUN_FOLDER_NAMES):
        raise RobenchError(f"hydra.run.dir={path} is an existing folder that is not a robench run (it holds "
                           f"{', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); use a new or empty folder")
    cfg_file = p / "config.yaml"
    if cfg_file.exists() and resume:
        try:
            old = yaml.safe_load(cfg_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise RobenchError(f"{cfg_file} is unreadable ({e.__class__.__name__}); use another hydra.run.dir") from None
        diff = config_differences(old, cfg_plain) if isinstance(old, dict) else ["(everything)"]
        if diff:
            raise RobenchError(f"{p} holds a run with a different config (differs in {', '.join(diff[:6])}); "
                               f"use another hydra.run.dir / hydra.sweep.dir, or resume=false to overwrite it")
    return p


def write_run_config(run_dir: Path, cfg: Any) -> None:
    """``config.yaml`` (the resolved config) and ``overrides.yaml`` (the command line's overrides, from
    Hydra's runtime; robench's own copy, written only once the run has been accepted)."""
    from omegaconf import OmegaConf

    from robench.evaluation.results import atomic_write_text

    atomic_write_text(Path(run_dir) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None
    except Exception:  # outside a Hydra app (tests calling run_attack directly)
        overrides = None
    if overrides is not None:
        import yaml

        atomic_write_text(Path(run_dir) / "overrides.yaml", yaml.safe_dump(overrides, default_flow_style=False))


def run_overrides(run_dir: Path) -> str:
    """The overrides that made the run in ``run_dir``, minus display-only ones: robench's own
    ``overrides.yaml`` (written once the run was accepted), else ``.hydra/overrides.yaml`` (runs of
    robench versions before it)."""
    import yaml

    run_dir = Path(run_dir)
    for f in (run_dir / "overrides.yaml", run_dir / ".hydra" / "overrides.yaml"):
        if f.exists():
            try:
                ov = yaml.safe_load(f.read_text()) or []
            except (OSError, yaml.YAMLError):
                return ""
            return " ".join(str(o) for o in ov if not str(o).startswith(IGNORED_OVERRIDES))
    return ""
