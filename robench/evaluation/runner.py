"""Run a prepared evaluation: records, resume, the protocols' extra runs and the summary (DESIGN.md, "The engine").

:class:`Runner` takes a :class:`~robench.evaluation.prepare.PreparedRun`, runs it through the engine
(:func:`robench.evaluation.engine.execute`) and turns the batches' outcomes into records and a
summary. It writes nothing itself: an optional :class:`~robench.evaluation.folder.RunFolder` (the
folder's one writer) gets the records after every batch, the pending rows mid-batch and the summary
at the end; an optional :class:`Display` shows progress and the tables. The engine reports mid-batch
rows to the runner through one named method, :meth:`Runner.pending` (the :class:`~robench.evaluation.engine.RunSink`
interface).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

import robench
from robench.errors import RobenchError
from robench.evaluation import results as R
from robench.evaluation.engine import BatchOutcome, execute
from robench.evaluation.prepare import PreparedRun, now
from robench.referee.guard import summary_entry

#: robench's own messages: Hydra's job logging sends them to <run dir>/<job name>.log (README, "Logs")
log = logging.getLogger("robench")

#: the largest attack_extra a plugin may add to a summary (JSON characters)
MAX_ATTACK_EXTRA = 100_000


class Display:
    """What a person sees: nothing (the Python API, sweeps' jobs), or :class:`ConsoleDisplay`."""

    def resumed(self, done: int, total: int) -> None:
        pass

    def start(self, name: str, total: int, done: int, succ: int) -> None:
        pass

    def advance(self, n: int, n_done: int, n_succ: int) -> None:
        pass

    def stop(self) -> None:
        pass

    def show(self, summary: Dict[str, Any], defense_table: Any, run_dir: Any) -> None:
        pass


class ConsoleDisplay(Display):
    """A rich progress bar (``progress``) and the summary table; in a sweep (``multirun``) one line per
    job instead; ``quiet``: nothing."""

    def __init__(self, progress: bool = True, quiet: bool = False, multirun: bool = False):
        self.progress, self.quiet, self.multirun = progress and not quiet and not multirun, quiet, multirun
        self._bar = None

    def resumed(self, done, total):
        if not self.quiet and not self.multirun:
            from rich.console import Console

            Console(stderr=True).print(f"resuming: {done} of {total} batches already complete")

    def start(self, name, total, done, succ):
        if not self.progress:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("success {task.fields[rate]}"), TimeElapsedColumn(),
                             console=Console(stderr=True))
        self._bar.start()
        self._task = self._bar.add_task("attack", total=total, completed=done,
                                        rate=f"{succ / done:.1%}" if done else "-")

    def advance(self, n, n_done, n_succ):
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=f"{n_succ / n_done:.1%}" if n_done else "-")

    def stop(self):
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def show(self, summary, defense_table, run_dir):
        if self.quiet:
            return
        if self.multirun:
            print(R.one_line(summary, run_dir), flush=True)
            return
        R.print_summary(summary)
        if defense_table is not None:
            from rich.console import Console

            Console().print(defense_table)


def attack_extra(attack: Any, name: str) -> Dict[str, Any]:
    """The attack's own figures (``summary_extra()``), kept apart from the metrics under ``attack_extra``:
    plain JSON values only (numbers, strings, booleans, null, lists, string-keyed mappings), at most
    :data:`MAX_ATTACK_EXTRA` characters; anything else is refused in one line."""
    import json

    extra = attack.summary_extra() if hasattr(attack, "summary_extra") else {}
    if not extra:
        return {}

    def plain(v: Any, depth: int = 0) -> bool:
        if depth > 8:
            return False
        if v is None or isinstance(v, (bool, str)):
            return True
        if isinstance(v, (int, float)):
            return type(v) in (int, float)
        if type(v) in (list, tuple):
            return all(plain(x, depth + 1) for x in v)
        if type(v) is dict:
            return all(type(k) is str and plain(x, depth + 1) for k, x in v.items())
        return False

    if type(extra) is not dict or not plain(extra):
        raise RobenchError(f"attack '{name}': summary_extra() must return plain JSON values (numbers, strings, lists, "
                           f"mappings), got {type(extra).__name__}")
    if len(json.dumps(extra, default=str)) > MAX_ATTACK_EXTRA:
        raise RobenchError(f"attack '{name}': summary_extra() returned more than {MAX_ATTACK_EXTRA:,} characters")
    return json.loads(json.dumps(extra))


class Runner:
    """Runs one :class:`PreparedRun` (see the module docstring). ``flush_seconds``: the longest wait between
    mid-batch writes of pending rows (default: the engine's :data:`~robench.evaluation.engine.FLUSH_SECONDS`)."""

    def __init__(self, prep: PreparedRun, folder: Any = None, display: Optional[Display] = None,
                 flush_seconds: Optional[float] = None, save_adversarial: Sequence[str] = ()):
        self.prep, self.folder, self.display = prep, folder, display or Display()
        self.flush_seconds = flush_seconds
        self.save = tuple(save_adversarial) if folder is not None else ()  # formats (robench/evaluation/adversarial.py)
        p = prep.plan
        cols = prep.evaluation.record_columns()
        t = p.targets
        self.records = [R.new_record(int(i), int(l), -1 if t is None else int(t[k]), int(c), bool(a), p.batch_of[k],
                                     prep.referee.checkpoints, cols)
                        for k, (i, l, c, a) in enumerate(zip(prep.indices.tolist(), p.y.tolist(),
                                                             prep.clean_pred.tolist(), p.attacked.tolist()))]
        self.done: set = set()
        self.pend: Dict[int, Dict[str, Any]] = {}  # plan row -> pending record of a finished sample whose batch still runs

    # ------------------------------------------------------------------ the engine's sink (RunSink)
    def pending(self, batch: int, rows: torch.Tensor, fields: List[Dict[str, Any]]) -> None:
        """Mid-batch: the uncertified fields of samples the oracle has finished (engine.Flusher)."""
        for k, f in zip(rows.tolist(), fields):
            self.pend[k] = {**self.records[k], **f, R.PENDING: True}
        self._flush()

    # ------------------------------------------------------------------ writing
    def _flush(self) -> None:
        """Rows of completed batches, then pending rows, atomically: nothing finished is lost, nothing doubled."""
        if self.folder is None:
            return
        b = self.prep.plan.batches
        rows = [self.records[k] for bt in sorted(self.done) for k in b[bt]]
        if self.pend:  # the column exists only while pending rows do (README, "What a run writes")
            rows = [{**r, R.PENDING: False} for r in rows] + [self.pend[k] for k in sorted(self.pend)]
        self.folder.write_records(rows)
        n_att = sum(self.records[k]["attacked"] for bt in self.done for k in b[bt])
        n_succ = sum(self.records[k]["success"] for bt in self.done for k in b[bt])
        self.folder.write_progress({
            "batches_done": len(self.done), "batches_total": len(b),
            "samples_done": sum(len(b[bt]) for bt in self.done), "samples_total": len(self.records),
            "attacked_done": int(n_att), "success": int(n_succ), "pending": len(self.pend),
            "status": "done" if len(self.done) == len(b) else "running", "attack": self.prep.name})

    # ------------------------------------------------------------------ the run
    def run(self, prior_records: Optional[List[Dict[str, Any]]] = None) -> Tuple[Dict[str, Any], List[Dict[str, Any]], torch.Tensor]:
        """Run the attack over the plan (batches of ``prior_records`` restored, not re-run), the protocols'
        extra runs, and summarize: returns (summary, records, best points). ``best`` holds each sample's
        best adversarial point (its clean image where none was seen; NaN for restored batches)."""
        prep, records = self.prep, self.records
        plan, batches = prep.plan, prep.plan.batches
        self.done = restore(records, batches, prior_records or [])
        resumed = len(self.done)
        best = plan.x.clone()
        for bt in self.done:
            best[batches[bt]] = float("nan")
        if self.done:
            log.info("resuming: %d of %d batches complete, %d to go", len(self.done), len(batches),
                     len(batches) - len(self.done))
            self.display.resumed(len(self.done), len(batches))
        idx = prep.indices
        log.info("%s on %s/%s/%s: %d samples (indices %d..%d), %d batch(es) of up to %d, seed %d", prep.name,
                 prep.meta.get("dataset"), prep.meta.get("model"), prep.evaluation.label, len(idx),
                 int(idx[0]) if len(idx) else -1, int(idx[-1]) if len(idx) else -1, len(batches),
                 prep.spec.attack.batch_size, plan.seed)
        self._flush()
        prep.evaluation.before_run()  # e.g. the shared protocol's build phase (evaluation/protocols.py, Shared)
        violations: List[Dict[str, Any]] = []
        n_done = sum(records[k]["attacked"] for bt in self.done for k in batches[bt])
        n_succ = sum(records[k]["success"] for bt in self.done for k in batches[bt])
        self.display.start(prep.name, int(plan.attacked.sum()), n_done, n_succ)
        try:
            for out in execute(prep.attack, prep.model, plan, prep.referee, prep.device, skip=self.done,
                               after=prep.evaluation.after_batch, name=prep.name,
                               sink=self if self.folder is not None else None, flush_seconds=self.flush_seconds):
                violations += [{"index": records[v["row"]]["index"], "batch": v["batch"]} for v in out.violations]
                for k, f in zip(out.rows.tolist(), out.fields):
                    records[k].update(f)
                if out.result is not None:
                    best[out.rows] = out.result.best_x
                for k in batches[out.batch]:
                    records[k]["batch_seconds"] = out.seconds
                    self.pend.pop(k, None)  # the certified rows replace the pending ones
                self.done.add(out.batch)
                self._flush()  # after every batch: nothing finished is lost
                if self.save:
                    self._save_batch(out, best)
                n_done += len(out.rows)
                n_succ += sum(f["success"] for f in out.fields)
                log.info("batch %d done (%d/%d): %d attacked, %d successes so far of %d, %.2fs", out.batch,
                         len(self.done), len(batches), len(out.rows), n_succ, n_done, out.seconds)
                self.display.advance(len(out.rows), n_done, n_succ)
        finally:
            self.display.stop()
        summary = self.summarize(resumed, violations)  # asks the attack for its figures (attack_extra) ...
        prep.close()  # ... then an isolated attack's sandbox is killed, before anything is summarized or written
        extra: Dict[str, List[BatchOutcome]] = {}
        for xr in prep.evaluation.extra_runs():  # e.g. the adaptive protocol's non-adaptive run, same engine
            xr.before()
            extra[xr.name] = list(execute(prep.make_attack(), prep.model, plan,
                                          dataclasses.replace(prep.referee, **xr.referee), prep.device, name=prep.name))
            xr.after()
        tables = prep.evaluation.merge(summary, records, plan.x, extra)
        run_dir = self.folder.path if self.folder is not None else None
        if self.folder is not None:
            for name, df in tables.items():
                self.folder.write_table(name, df)
            self.folder.write_summary(summary, R.summary_markdown(summary, prep.evaluation.rows(summary),
                                                                  f"defense {prep.evaluation.label}"))
        log.info("finished: success rate %s, robust accuracy %s\n%s", summary["success_rate"],
                 summary["robust_accuracy"], R.summary_markdown(summary))
        self.display.show(summary, prep.evaluation.table(summary), run_dir)
        return summary, records, best

    def _save_batch(self, out: BatchOutcome, best: torch.Tensor) -> None:
        """The batch's saved examples, after its records: every row of the batch, its stored point (the best
        adversarial one, the clean input where none was seen) and the victim's label of it (a referee-side
        forward pass, not a query)."""
        from robench.evaluation.adversarial import batch_arrays

        prep = self.prep
        rows = prep.plan.batches[out.batch]
        recs = [self.records[k] for k in rows]
        x = best[rows]
        pred = torch.tensor([r["clean_pred"] for r in recs])
        adv = torch.tensor([bool(r["attacked"]) and not (isinstance(r["l2"], float) and math.isnan(r["l2"]))
                            for r in recs])
        if bool(adv.any()):
            with torch.no_grad():
                pred[adv] = prep.model(x[adv].to(prep.device)).argmax(1).cpu()
        fields = {"index": [r["index"] for r in recs], "label": [r["label"] for r in recs],
                  "target": [r["target"] for r in recs], "clean_pred": [r["clean_pred"] for r in recs],
                  "success": [bool(r["success"]) for r in recs], "adversarial": adv.tolist()}
        self.folder.write_adversarial(out.batch, batch_arrays(fields, x, prep.plan.x[rows], pred), self.save,
                                      prep.domain)

    def summarize(self, resumed: int, violations: List[Dict[str, Any]]) -> Dict[str, Any]:
        prep = self.prep
        ref, meta = prep.referee, prep.meta
        totals = R.record_totals(self.records)
        summary = R.summarize(self.records, {
            **{k: meta.get(k) for k in ("attack", "model", "dataset", "defense")}, "budget": prep.spec.budget.label,
            "norm": ref.norm, "eps": ref.eps, "max_queries": ref.max_queries, "targeted": meta["targeted"],
            "target": meta["target"], "seconds": totals["seconds"], "recheck_failed": totals["recheck_failed"],
            "device": str(prep.device), "seed": prep.plan.seed, "robench_version": robench.__version__,
            "started": meta.get("started"), "finished": now()})
        summary["checkpoint"] = meta.get("checkpoint")
        summary.update(meta.get("victim") or {})
        summary["access"] = ref.access  # the run's referee, not the attack object
        summary["shard"] = meta.get("shard")
        summary["batch_size"] = prep.spec.attack.batch_size
        summary["resumed_batches"] = resumed
        summary["host"], summary["pid"] = socket.gethostname(), os.getpid()
        summary["attack_extra"] = attack_extra(prep.attack, prep.name)  # never a metric's key
        summary["integrity"] = summary_entry(violations, prep.spec.isolate)  # the referee's independent check
        return summary


def restore(records: List[Dict[str, Any]], batches: Dict[int, List[int]], prior: List[Dict[str, Any]]) -> set:
    """Copy the rows of batches an earlier, interrupted process completed into ``records``; returns
    the set of those batches. A batch counts only when all its rows are there and match this slice.
    Pending rows (a batch the process did not complete) are discarded: that batch is re-run whole,
    with its own seed, so the records equal an uninterrupted run's."""
    if not prior:
        return set()
    # keyed by (index, target): with budget.target=all a sample has one row per target
    by_index = {(int(r["index"]), int(r["target"])): {k: v for k, v in r.items() if k != R.PENDING}
                for r in prior if not r.get(R.PENDING)}
    done = set()
    for bt, rows in batches.items():
        olds = [by_index.get((records[k]["index"], records[k]["target"])) for k in rows]
        if any(o is None or _num(o.get("batch", -1)) != bt for o in olds):
            continue
        if any(int(o["label"]) != records[k]["label"] or bool(o["attacked"]) != records[k]["attacked"]
               for o, k in zip(olds, rows)):
            raise RobenchError("records.csv in the run folder does not match this evaluation slice; "
                               "use another run folder or resume=false")
        for o, k in zip(olds, rows):
            records[k] = dict(o)
        done.add(bt)
    return done


def _num(v: Any) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return -1
    return int(f) if math.isfinite(f) else -1
