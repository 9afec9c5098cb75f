"""One live display for a ``-m`` sweep: jobs done / total and the progress of the jobs running now.

Every attack job rewrites ``progress.json`` in its run folder after each batch (``robench/evaluation/runner.py``).
:class:`SweepProgress`, a Hydra callback (configured in ``configs/run_attack.yaml``), starts a thread
in the launching process that polls those files under the sweep folder. It needs nothing from the
launcher, so it works alike for local, joblib, submitit and Ray jobs (on a cluster, as long as the
sweep folder is on a shared file system). Jobs of a sweep turn their own progress bars off.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hydra.experimental.callback import Callback

#: the monitor of the sweep running in this process (kept off the callback object, which Hydra
#: pickles to the launcher's workers)
_ACTIVE: Dict[str, Any] = {}


def count_jobs(config: Any) -> Optional[int]:
    """Number of jobs the basic sweeper will launch (product of the sweep lengths), else None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        sweeper = config.hydra.sweeper
        if "BasicSweeper" not in str(sweeper.get("_target_", "")):
            return None
        keyed: Dict[str, str] = {}
        for k, v in (sweeper.get("params") or {}).items():
            keyed[str(k)] = f"{k}={v}"
        parser = OverridesParser.create()
        for o in parser.parse_overrides(list(config.hydra.overrides.task)):
            keyed[o.get_key_element()] = o.input_line
        n = 1
        for o in parser.parse_overrides(list(keyed.values())):
            if o.is_sweep_override():
                n *= len(list(o.sweep_string_iterator()))
        return n
    except Exception:  # an exotic override: show the count of jobs seen instead
        return None


def sweep_status(sweep_dir: Path) -> Tuple[int, List[Tuple[str, Dict[str, Any]]]]:
    """(jobs finished, [(job folder, progress) of jobs still running]) from the progress.json files."""
    done, running = 0, []
    for f in sorted(Path(sweep_dir).glob("**/progress.json")):
        try:
            p = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # being replaced right now
        if p.get("status") == "done":
            done += 1
        else:
            running.append((str(f.parent.relative_to(sweep_dir)), p))
    return done, running


class _Monitor(threading.Thread):
    def __init__(self, sweep_dir: Path, total: Optional[int], interval: float = 0.5):
        super().__init__(daemon=True, name="robench-sweep-progress")
        self.sweep_dir, self.total, self.interval = Path(sweep_dir), total, interval
        self.stop = threading.Event()

    def run(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        if not console.is_terminal:  # logs and pipes: a single line at the end (see on_multirun_end)
            self.stop.wait()
            return
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console) as bar:
            sweep = bar.add_task("[bold]sweep jobs", total=self.total, info="")
            jobs: Dict[str, Any] = {}
            while True:
                stopping = self.stop.wait(self.interval)
                done, running = sweep_status(self.sweep_dir)
                bar.update(sweep, completed=done, total=self.total or max(done + len(running), 1))
                names = {n for n, _ in running}
                for name in list(jobs):
                    if name not in names:
                        bar.remove_task(jobs.pop(name))
                for name, p in running:
                    att, succ = p.get("attacked_done", 0), p.get("success", 0)
                    info = f"success {succ / att:.1%}" if att else ""
                    if name not in jobs:
                        jobs[name] = bar.add_task(f"  job {name} {p.get('attack', '')}", total=p.get("batches_total"), info="")
                    bar.update(jobs[name], completed=p.get("batches_done", 0), total=p.get("batches_total"), info=info)
                if stopping:
                    return


class SweepProgress(Callback):
    """Hydra callback: starts the monitor when a multirun starts, prints the tally when it ends."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        if config.get("quiet", False) or not config.get("progress", True):
            return
        m = _Monitor(Path(config.hydra.sweep.dir), count_jobs(config))
        _ACTIVE["monitor"] = m
        m.start()

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        m = _ACTIVE.pop("monitor", None)
        if m is None:
            return
        m.stop.set()
        m.join(timeout=5)
        from rich.console import Console

        done, running = sweep_status(m.sweep_dir)
        total = m.total if m.total is not None else done + len(running)
        Console(stderr=True).print(f"sweep: {done}/{total} jobs complete in {m.sweep_dir}"
                                   + (f" ({len(running)} unfinished: re-run the same command with "
                                      f"hydra.sweep.dir={m.sweep_dir} to finish them)" if done < total else ""))
