"""The ``attack`` Hydra job, and the run-folder machinery it shares with :func:`robench.evaluate`.

Data flows one way (the repository's DESIGN.md): config -> dataset slice -> victim -> plan -> engine
(oracle <- attack) -> records -> protocols -> summary. :func:`run_attack` turns the config into a
:class:`~robench.evaluation.engine.Plan`, a :class:`~robench.evaluation.engine.Referee` and an
:class:`~robench.evaluation.protocols.Evaluation`; :func:`run_plan` runs them through the engine, writes records
after every batch (resumable), runs the protocols' extra runs and writes the summary.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

import robench
from robench.evaluation import results as R
from robench.attacks.base import AttackContext, ClassImages
from robench.config import resolve_device, validate_attack_config, validate_budget, validate_names
from robench.data import eval_slice, load_dataset, parse_shard
from robench.data.base import eval_indices
from robench.evaluation.engine import Plan, Referee, execute
from robench.errors import RobenchError
from robench.referee.guard import summary_entry
from robench.evaluation.protocols import Evaluation
from robench.registry import ATTACKS, MODELS, instantiate
from robench.training.loop import predict
from robench.models.sources import victim_summary
from robench.evaluation.folder import write_run_config

#: robench's own messages: Hydra's job logging sends them to <run dir>/<job name>.log (README, "Logs")
log = logging.getLogger("robench")


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _plain(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def prior_run(run_dir: Path, cfg_plain: Dict[str, Any], resume: bool):
    """What an earlier run in this folder left: (summary or None, records of completed batches).

    With ``resume`` (the default) a folder holding the same config continues where it stopped; a
    folder holding a different config is refused (one line naming the keys that differ)."""
    import yaml

    cfg_file, rec_file = run_dir / "config.yaml", run_dir / "records.csv"
    if not resume or not cfg_file.exists():
        return None, []
    old = yaml.safe_load(cfg_file.read_text()) or {}
    diff = R.config_differences(old, cfg_plain)
    if diff:
        raise RobenchError(f"{run_dir} holds a run with a different config (differs in {', '.join(diff[:6])}); "
                           f"use another hydra.run.dir / hydra.sweep.dir, or resume=false to overwrite it")
    summary = None
    if (run_dir / "summary.json").exists():
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except json.JSONDecodeError:
            summary = None
    return summary, (R.read_records(rec_file) if rec_file.exists() else [])


def prefix_with_n_correct(correct: torch.Tensor, n: int) -> int:
    """Length of the shortest prefix holding ``n`` originally-correct samples (all of it if it has fewer)."""
    pos = correct.nonzero().flatten()
    return int(pos[n - 1]) + 1 if len(pos) >= n else len(correct)


def run_plan(attack, make_attack: Callable[[], Any], model, plan: Plan, idx: torch.Tensor, clean_pred: torch.Tensor,
             referee: Referee, ev: Evaluation, device, meta: Dict[str, Any], *, run_dir: Optional[Path] = None,
             prior_records: Optional[List[Dict[str, Any]]] = None, batch_size: int = 1000, progress: bool = True,
             quiet: bool = False, multirun: bool = False, announce: bool = True, isolate: bool = False,
             flush_seconds: Optional[float] = None):
    """Run ``attack`` over ``plan`` through the engine and summarize: returns (summary, records, best points).

    With ``run_dir`` the run folder gets records.csv and progress.json after every batch (batches
    already in ``prior_records`` are restored, not re-run) and, mid-batch, at most every
    ``flush_seconds`` (default :data:`robench.evaluation.engine.FLUSH_SECONDS`), the pending rows of samples the
    oracle has finished (:class:`robench.evaluation.engine.Flusher`); then summary.json / summary.md; the
    protocols of ``ev`` add their columns, run their declared extra runs and merge their keys.
    ``best`` holds each sample's best adversarial point (its clean image where none was seen; NaN
    for batches restored from an earlier process)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    targets = plan.targets
    extra_cols = ev.record_columns()
    records = [R.new_record(int(i), int(l), -1 if targets is None else int(targets[k]), int(p), bool(a), plan.batch_of[k],
                            referee.checkpoints, extra_cols)
               for k, (i, l, p, a) in enumerate(zip(idx.tolist(), plan.y.tolist(), clean_pred.tolist(), plan.attacked.tolist()))]
    batches = plan.batches
    done = _restore(records, batches, prior_records or [])
    resumed = len(done)
    best = plan.x.clone()
    for bt in done:
        best[batches[bt]] = float("nan")
    if done:
        log.info("resuming %s: %d of %d batches complete, %d to go", run_dir, len(done), len(batches), len(batches) - len(done))
        if not quiet and not multirun and announce:
            console.print(f"resuming: {len(done)} of {len(batches)} batches already complete")
    log.info("%s on %s/%s/%s: %d samples (indices %d..%d), %d batch(es) of up to %d, seed %d", meta["attack"],
             meta["dataset"], meta["model"], ev.label, len(idx), int(idx[0]), int(idx[-1]), len(batches), batch_size, plan.seed)

    pend: Dict[int, Dict[str, Any]] = {}  # plan row -> pending record of a finished sample whose batch still runs

    def flush():  # rows of completed batches, then pending rows, atomically: nothing finished is lost, nothing doubled
        if run_dir is None:
            return
        rows = [records[k] for bt in sorted(done) for k in batches[bt]]
        if pend:  # the column exists only while pending rows do (README, "What a run writes")
            rows = [{**r, R.PENDING: False} for r in rows] + [pend[k] for k in sorted(pend)]
        R.write_records(run_dir / "records.csv", rows)
        n_att = sum(records[k]["attacked"] for bt in done for k in batches[bt])
        n_succ = sum(records[k]["success"] for bt in done for k in batches[bt])
        R.atomic_write_text(run_dir / "progress.json", json.dumps({
            "batches_done": len(done), "batches_total": len(batches), "samples_done": sum(len(batches[bt]) for bt in done),
            "samples_total": len(records), "attacked_done": int(n_att), "success": int(n_succ), "pending": len(pend),
            "status": "done" if len(done) == len(batches) else "running", "attack": meta["attack"]}) + "\n")

    def pending(bt: int, rows: torch.Tensor, fields: List[Dict[str, Any]]):  # mid-batch (engine.Flusher)
        for k, f in zip(rows.tolist(), fields):
            pend[k] = {**records[k], **f, R.PENDING: True}
        flush()

    flush()
    violations: List[Dict[str, Any]] = []
    with Progress(TextColumn(f"[bold]{meta['attack']}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("success {task.fields[rate]}"), TimeElapsedColumn(),
                  console=console, disable=multirun or not progress) as bar:
        n_done = sum(records[k]["attacked"] for bt in done for k in batches[bt])
        n_succ = sum(records[k]["success"] for bt in done for k in batches[bt])
        task = bar.add_task("attack", total=int(plan.attacked.sum()), completed=n_done,
                            rate=f"{n_succ / n_done:.1%}" if n_done else "-")
        for out in execute(attack, model, plan, referee, device, skip=done, after=ev.after_batch, isolate=isolate,
                           name=meta["attack"], pending=pending if run_dir is not None else None,
                           flush_seconds=flush_seconds):
            violations += [{"index": records[v["row"]]["index"], "batch": v["batch"]} for v in out.violations]
            for k, f in zip(out.rows.tolist(), out.fields):
                records[k].update(f)
            if out.result is not None:
                best[out.rows] = out.result.best_x
            for k in batches[out.batch]:
                records[k]["batch_seconds"] = out.seconds
            done.add(out.batch)
            for k in batches[out.batch]:
                pend.pop(k, None)  # the certified rows replace the pending ones
            flush()  # after every batch: nothing finished is lost
            n_done += len(out.rows)
            n_succ += sum(f["success"] for f in out.fields)
            log.info("batch %d done (%d/%d): %d attacked, %d successes so far of %d, %.2fs", out.batch, len(done),
                     len(batches), len(out.rows), n_succ, n_done, out.seconds)
            bar.update(task, advance=len(out.rows), rate=f"{n_succ / n_done:.1%}" if n_done else "-")

    totals = R.record_totals(records)
    budget_label = f"{referee.norm}_{referee.eps}" + ("_targeted" if meta["targeted"] else "")
    summary = R.summarize(records, {
        **{k: meta[k] for k in ("attack", "model", "dataset", "defense")}, "budget": budget_label, "norm": referee.norm,
        "eps": referee.eps, "max_queries": referee.max_queries, "targeted": meta["targeted"], "target": meta["target"],
        "seconds": totals["seconds"], "recheck_failed": totals["recheck_failed"], "device": str(device),
        "seed": plan.seed, "robench_version": robench.__version__, "started": meta["started"], "finished": _now()})
    summary["checkpoint"] = meta.get("checkpoint")
    summary.update(meta.get("victim") or {})
    summary["access"] = referee.access  # the run's referee, not the attack object
    summary["shard"] = meta.get("shard")
    summary["batch_size"] = batch_size
    summary["resumed_batches"] = resumed
    summary["host"], summary["pid"] = __import__("socket").gethostname(), __import__("os").getpid()
    summary.update(attack.summary_extra())  # attack-specific figures (e.g. ensemble contributions)
    extra = {}
    summary["integrity"] = summary_entry(violations, isolate)  # the referee's independent check (integrity.py)
    for run in ev.extra_runs():  # e.g. the adaptive protocol's non-adaptive run, through the same engine
        run.before()
        extra[run.name] = list(execute(make_attack(), model, plan, dataclasses.replace(referee, **run.referee), device,
                                       isolate=isolate, name=meta["attack"]))
        run.after()
    ev.merge(summary, records, plan.x, run_dir, extra)
    if run_dir is not None:
        R.write_summary(run_dir, summary)
    log.info("finished: success rate %s, robust accuracy %s\n%s", summary["success_rate"],
             summary["robust_accuracy"], R.summary_markdown(summary))
    if quiet:
        pass
    elif multirun:
        print(R.one_line(summary, run_dir), flush=True)
    else:
        R.print_summary(summary)
    if run_dir is not None:
        ev.report(run_dir, summary, show=not (quiet or multirun))
    return summary, records, best


def _restore(records: List[Dict[str, Any]], batches: Dict[int, List[int]], prior: List[Dict[str, Any]]) -> set:
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
        if any(o is None or int(o.get("batch", -1)) != bt for o in olds):
            continue
        if any(int(o["label"]) != records[k]["label"] or bool(o["attacked"]) != records[k]["attacked"]
               for o, k in zip(olds, rows)):
            raise RobenchError("records.csv in the run folder does not match this evaluation slice; "
                               "use another run folder or resume=false")
        for o, k in zip(olds, rows):
            records[k] = dict(o)
        done.add(bt)
    return done
