"""Run folders: the one writer of a run folder (:class:`RunFolder`), whether a path can hold a run, and the
overrides that made it.

A :class:`RunFolder` owns every file of an attack run folder: ``config.yaml``, ``overrides.yaml``,
``records.csv`` (with pending rows), ``progress.json``, ``summary.json``, ``summary.md``, the protocols'
tables (``detection.csv``) and resume. It writes nothing before :meth:`RunFolder.accept`, which comes
after every check (the config, the data, the victim, the attack): a refused command leaves an
existing folder byte-identical, and :meth:`RunFolder.abandon` removes what the command itself made
before the refusal (the folder Hydra created for the job, its log). Hydra writes no ``.hydra/``
(``hydra.output_subdir: null``); the job's log lines are held in memory until the run is accepted.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from robench.errors import RobenchError


#: what robench (and older robench versions, through Hydra) writes in a run folder: a folder that
#: holds anything else is not a robench run folder and is refused as one
RUN_FOLDER_NAMES = {".hydra", "config.yaml", "overrides.yaml", "records.csv", "progress.json", "summary.json",
                    "summary.md", "detection.csv", "perturbation.csv", "train_log.csv", "attack.log",
                    "train-defense.log", "adversarial"}
#: what a run's outputs are (removed when a run folder is overwritten with resume=false)
RUN_OUTPUTS = ("records.csv", "progress.json", "summary.json", "summary.md", "detection.csv", "perturbation.csv",
               "adversarial")

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


def hydra_overrides() -> Optional[List[str]]:
    """The command line's overrides of the running Hydra job (None outside a Hydra app)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None
    except Exception:  # outside a Hydra app (tests calling the jobs directly)
        return None


@dataclass(frozen=True)
class FolderState:
    """What a path held before a command started: whether it existed, the names in it, and its nearest
    existing ancestor (so that a refused command can remove exactly what it made)."""

    path: Path
    existed: bool
    names: frozenset
    ancestor: Path
    children: Tuple[Tuple[str, frozenset], ...] = ()  # the names inside each sub-folder (a sweep's job folders)

    @classmethod
    def capture(cls, path: Any) -> "FolderState":
        p = Path(path).absolute()
        anc = p
        while not anc.exists() and anc.parent != anc:
            anc = anc.parent
        names = frozenset(q.name for q in p.iterdir()) if p.is_dir() else frozenset()
        kids = tuple((n, frozenset(q.name for q in (p / n).iterdir())) for n in sorted(names) if (p / n).is_dir())
        return cls(p, p.exists(), names, anc, kids)

    @classmethod
    def for_job(cls, state: "FolderState", run_dir: Any) -> "FolderState":
        """The state of a job's folder, from the state captured before the command: the folder itself, a
        sweep's job folder (``state.path/N``), or a new folder below ``state.ancestor`` (a time-stamped run folder)."""
        p = Path(run_dir).absolute()
        if p == state.path:
            return state
        if p.parent == state.path:
            kids = dict(state.children)
            return cls(p, p.name in state.names, kids.get(p.name, frozenset()), state.path if state.existed else state.ancestor)
        return cls(p, False, frozenset(), state.ancestor)

    def restore(self, path: Optional[Path] = None) -> None:
        """Remove what was made at ``path`` (default: this state's path) since the capture: a folder that
        did not exist (with the new empty folders above it), or new robench files in one that did."""
        p = Path(path or self.path).absolute()
        same = p == self.path
        if same and self.existed:
            if p.is_dir():
                for q in p.iterdir():
                    if q.name not in self.names and (q.name in RUN_FOLDER_NAMES or q.name.startswith(".")):
                        shutil.rmtree(q) if q.is_dir() else q.unlink(missing_ok=True)
            return
        if p.is_dir() and (not same or not self.existed):
            shutil.rmtree(p, ignore_errors=True)
        stop = self.ancestor
        q = p.parent
        while q != stop and str(q).startswith(str(stop)) and q.is_dir() and not any(q.iterdir()):
            q.rmdir()
            q = q.parent


class _HeldLog(logging.handlers.MemoryHandler):
    """A file handler's records held in memory until the run is accepted (then written in order)."""

    def __init__(self, target: logging.Handler):
        super().__init__(capacity=10 ** 9, flushLevel=logging.CRITICAL + 10, target=target, flushOnClose=False)

    def shouldFlush(self, record) -> bool:  # never on its own: release() decides
        return False


class RunFolder:
    """The one writer of an attack run folder (see the module docstring).

    ``settings``: what the run computes, as plain values (written to ``config.yaml``; a folder holding
    another config is refused); ``resume``: continue a folder of the same config from its completed
    batches; ``state``: the folder as it was before the command (default: now); ``overrides``: the
    command line's overrides (``overrides.yaml``; default: Hydra's, when in a Hydra job)."""

    def __init__(self, path: Any, settings: Dict[str, Any], *, resume: bool = True,
                 state: Optional[FolderState] = None, overrides: Optional[List[str]] = None):
        self.path = Path(path)
        self.settings = settings
        self.resume = bool(resume)
        self.state = state or FolderState.capture(self.path)
        self.overrides = overrides
        self.accepted = False
        self._held: List[Tuple[logging.Logger, logging.Handler, _HeldLog]] = []
        check_run_dir(str(self.path), settings, self.resume)

    @classmethod
    def for_config(cls, cfg: Any, path: Any) -> "RunFolder":
        """The folder of a composed ``robench attack`` / ``train-defense`` config (its ``resume`` setting)."""
        from omegaconf import OmegaConf

        plain = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
        return cls(path, plain, resume=bool(plain.get("resume", True)))

    # ------------------------------------------------------------------ before the run is accepted
    def hold_logs(self) -> None:
        """Hold the records of file log handlers writing into this folder (Hydra's job log) until accept."""
        root = logging.getLogger()
        for h in list(root.handlers):
            f = getattr(h, "baseFilename", None)
            if f and Path(f).absolute().parent == self.path.absolute():
                held = _HeldLog(h)
                root.removeHandler(h)
                root.addHandler(held)
                self._held.append((root, h, held))

    def prior(self) -> Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]]]:
        """What an earlier run of this same config left: (its summary, or None while unfinished; the
        records of its completed batches). Nothing when ``resume`` is false."""
        from robench.evaluation import results as R

        if not self.resume or not (self.path / "config.yaml").exists():
            return None, []
        summary = None
        if (self.path / "summary.json").exists():
            try:
                summary = json.loads((self.path / "summary.json").read_text())
            except (json.JSONDecodeError, OSError):
                summary = None
        rec = self.path / "records.csv"
        return summary, (R.read_records(rec) if rec.exists() else [])

    def accept(self) -> None:
        """The run passed every check: write ``config.yaml`` and ``overrides.yaml``, drop a previous run's
        outputs when overwriting (``resume=false``), and let the held log lines through."""
        import yaml

        from robench.evaluation.results import atomic_write_text

        if not self.resume:
            for n in RUN_OUTPUTS:
                q = self.path / n
                shutil.rmtree(q) if q.is_dir() else q.unlink(missing_ok=True)
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(self.settings, default_flow_style=False, sort_keys=False))
        ov = self.overrides if self.overrides is not None else hydra_overrides()
        if ov is not None:
            atomic_write_text(self.path / "overrides.yaml", yaml.safe_dump(list(ov), default_flow_style=False))
        self.accepted = True
        self._release(keep=True)

    def abandon(self) -> None:
        """The command was refused before :meth:`accept`: what it made here is removed (nothing else)."""
        if self.accepted:
            return
        self._release(keep=False)
        self.state.restore(self.path)

    def _release(self, keep: bool) -> None:
        for root, h, held in self._held:
            if keep:
                held.flush()
            else:
                held.buffer.clear()
                h.close()
            root.removeHandler(held)
            if keep:
                root.addHandler(h)
        self._held = []

    # ------------------------------------------------------------------ the run's files (after accept)
    def _need(self) -> None:
        if not self.accepted:
            raise RuntimeError("RunFolder: nothing is written before accept()")

    def write_records(self, rows: List[Dict[str, Any]]) -> None:
        from robench.evaluation import results as R

        self._need()
        R.write_records(self.path / "records.csv", rows)

    def write_progress(self, progress: Dict[str, Any]) -> None:
        from robench.evaluation.results import atomic_write_text

        self._need()
        atomic_write_text(self.path / "progress.json", json.dumps(progress) + "\n")

    def write_summary(self, summary: Dict[str, Any], markdown: str) -> None:
        from robench.evaluation import results as R

        self._need()
        R.atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2, default=R.json_default) + "\n")
        R.atomic_write_text(self.path / "summary.md", markdown)

    def write_adversarial(self, batch: int, arrays: Dict[str, Any], formats=("npz",), domain=None) -> None:
        """A completed batch's saved examples (robench/evaluation/adversarial.py): ``adversarial/batch_<b>.npz``,
        and per sample a PNG (images) or a WAV (signals with a sample rate) when ``formats`` asks."""
        from robench.evaluation import adversarial as A
        from robench.evaluation.results import atomic_write_bytes

        self._need()
        folder = self.path / A.FOLDER
        atomic_write_bytes(folder / f"batch_{int(batch):05d}.npz", A.npz_bytes(arrays))
        lo, hi = (domain.box if domain is not None else (0.0, 1.0))
        for k in range(len(arrays["index"])):
            name = A.sample_name(int(arrays["index"][k]), int(arrays["label"][k]), int(arrays["target"][k]))
            if "png" in formats and arrays["x"].ndim == 4:
                atomic_write_bytes(folder / "png" / f"{name}.png", A.png_bytes(arrays["x"][k], lo, hi))
            if "wav" in formats and arrays["x"].ndim == 3 and domain is not None and domain.sample_rate:
                atomic_write_bytes(folder / "wav" / f"{name}.wav", A.wav_bytes(arrays["x"][k], domain.sample_rate))

    def write_table(self, name: str, df) -> None:
        from robench.evaluation.results import atomic_write_text

        self._need()
        if name not in RUN_FOLDER_NAMES:
            raise ValueError(f"{name} is not a run folder file")
        atomic_write_text(self.path / name, df.to_csv(index=False))


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
