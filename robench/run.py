"""The ``attack`` Hydra job, and the run-folder machinery it shares with :func:`robench.evaluate`.

Data flows one way (the repository's DESIGN.md): config -> dataset slice -> victim -> plan -> engine
(oracle <- attack) -> records -> protocols -> summary. :func:`run_attack` turns the config into a
:class:`~robench.engine.Plan`, a :class:`~robench.engine.Referee` and an
:class:`~robench.protocols.Evaluation`; :func:`run_plan` runs them through the engine, writes records
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
from robench import results as R
from robench.attacks.base import AttackContext, ClassImages
from robench.config import resolve_device, validate_attack_config, validate_budget, validate_names
from robench.data import eval_slice, load_dataset, parse_shard
from robench.data.base import eval_indices
from robench.engine import (Plan, Referee, batch_seed, choose_targets, execute, expand_all_targets,  # noqa: F401
                            prepare_attack, run_all)
from robench.errors import RobenchError
from robench.integrity import summary_entry
from robench.protocols import Evaluation
from robench.registry import ATTACKS, MODELS, instantiate
from robench.train import predict
from robench.train_job import run_train  # noqa: F401  (the train-defense job; cli.py imports it from here)
from robench.models.sources import victim_summary
from robench.victim import load_victim, refuse_gradients, surrogate_loader  # noqa: F401  (load_victim: kept importable from here)
from robench.run_folder import write_run_config

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


def run_attack(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    validate_attack_config(cfg)  # every setting, before any work (robench/config.py)
    validate_names(cfg, ("dataset", "model", "attack"))
    ev = Evaluation(cfg)  # validates the defense group (recipe, input transformations, detector)
    parse_shard(cfg.dataset.get("shard"))
    n_correct = cfg.get("n_correct")
    if n_correct is not None and (not isinstance(n_correct, int) or isinstance(n_correct, bool) or n_correct < 1):
        raise RobenchError(f"n_correct must be an integer >= 1 or null, got '{n_correct}'")
    if n_correct is not None and cfg.dataset.get("shard"):
        raise RobenchError("n_correct cuts the slice after its n-th correct sample and cannot be combined with "
                           "dataset.shard: use dataset.n_samples with shards")

    def make_attack():
        return instantiate(ATTACKS, cfg.attack.name, _plain(cfg.attack).get("params"), "attack")

    isolate = cfg.get("isolate", False)
    if not isinstance(isolate, bool):
        raise RobenchError(f"isolate must be true or false, got '{isolate}'")
    attack = make_attack()
    if cfg.model.get("source") in (None, "", "registry"):  # gbdt: no gradients, refused before the victim and data load
        refuse_gradients(MODELS.get(cfg.model.name), attack.access, cfg.attack.name)
    batch_size = int(cfg.attack.get("batch_size", 1000))
    if batch_size < 1:
        raise RobenchError(f"attack.batch_size must be >= 1, got {batch_size}")
    device = resolve_device(cfg.device)
    started = _now()
    quiet = bool(cfg.get("quiet", False))
    prior_summary, prior_records = prior_run(run_dir, _plain(cfg), bool(cfg.get("resume", True)))
    if prior_summary is not None:  # a finished run: skip it (re-running an interrupted sweep)
        log.info("%s: complete already (summary.json), skipped", run_dir)
        if not quiet:
            from rich.console import Console

            Console(stderr=True).print(f"[dim]skipped {run_dir}: complete already[/dim]")
        return prior_summary
    write_run_config(run_dir, cfg)  # config.yaml + overrides.yaml, once the run is accepted

    splits = load_dataset(cfg.dataset)
    validate_budget(cfg.budget, splits.num_classes)
    n_samples, offset = cfg.dataset.get("n_samples"), int(cfg.dataset.get("offset", 0))
    idx, x, y = eval_slice(splits, n_samples, offset, cfg.dataset.get("shard"), unit=batch_size)
    pos = idx - offset  # positions in the full, unsharded slice: batch b = positions [b*B, (b+1)*B)
    n_slice = len(eval_indices(len(splits.test), n_samples, offset, None))
    model, meta = load_victim(cfg, splits, device)
    ev.prepare(model, attack, cfg.attack, splits, x)  # pre-flight, seeds, BPDA switch, EOT, detector
    context = AttackContext(device=device, class_images=ClassImages(splits.train),
                            load_surrogate=surrogate_loader(cfg.checkpoint_dir, _plain(cfg.dataset), splits, device))
    prepare_attack(attack, context)
    logits = predict(model, x).cpu()
    clean_pred = logits.argmax(1)
    if n_correct is not None:  # the slice ends at its n-th originally-correct sample
        cut = prefix_with_n_correct(clean_pred == y, n_correct)
        idx, x, y, logits, clean_pred = idx[:cut], x[:cut], y[:cut], logits[:cut], clean_pred[:cut]
        pos, n_slice = pos[:cut], cut
    b = cfg.budget
    if b.targeted and b.target == "all":  # every (sample, other class) pair: num_classes - 1 rows per sample
        targets, pos, y, idx, x, logits, clean_pred = expand_all_targets(splits.num_classes, pos, y, idx, x, logits,
                                                                         clean_pred)
        n_slice *= splits.num_classes - 1
    else:
        targets = (choose_targets(b.target, y, logits, splits.num_classes, torch.Generator().manual_seed(int(cfg.seed)),
                                  pos, n_slice) if b.targeted else None)
    attacked = (clean_pred == y) if cfg.get("correct_only", True) else torch.ones_like(y, dtype=torch.bool)
    if targets is not None:
        attacked &= targets != y  # a target equal to the label is no attack at all
    plan = Plan(x, y, targets, attacked, (pos // batch_size).tolist(), int(cfg.seed))
    cps = b.get("checkpoints")  # anytime curve (minimal-distortion attacks): best distortion at these query counts
    cps = sorted({int(c) for c in cps}) if cps is not None else (
        R.default_checkpoints(int(b.max_queries)) if attack.minimizes_distortion else [])
    referee = Referee(access=attack.access, norm=b.norm, eps=b.eps, max_queries=int(b.max_queries),
                      num_classes=splits.num_classes, stop_on_success=not attack.minimizes_distortion,
                      recheck_repeats=ev.recheck_repeats, confirm_repeats=ev.confirm_repeats,
                      eot_samples=ev.eot_samples, checkpoints=tuple(cps))
    meta_summary = {"attack": cfg.attack.name, "model": cfg.model.name, "dataset": cfg.dataset.name,
                    "defense": ev.label, "targeted": bool(b.targeted), "target": b.target if b.targeted else None,
                    "seed": int(cfg.seed), "started": started, "checkpoint": meta.get("path", meta.get("source")),
                    "shard": cfg.dataset.get("shard"),
                    "victim": {**victim_summary(cfg, meta, splits),
                               **({"model_told": meta["model_told"]} if meta.get("model_told") else {})}}  # model source, name, weights sha256 (models/sources.py)

    def fresh_attack():  # a protocol's extra run gets its own instance, prepared like the main one
        a = make_attack()
        prepare_attack(a, context)
        return a

    summary, _, _ = run_plan(attack, fresh_attack, model, plan, idx, clean_pred, referee, ev, device, meta_summary,
                             run_dir=run_dir, prior_records=prior_records, batch_size=batch_size,
                             progress=bool(cfg.get("progress", True)) and not quiet, quiet=quiet, multirun=_in_multirun(),
                             isolate=isolate)
    return summary


def run_plan(attack, make_attack: Callable[[], Any], model, plan: Plan, idx: torch.Tensor, clean_pred: torch.Tensor,
             referee: Referee, ev: Evaluation, device, meta: Dict[str, Any], *, run_dir: Optional[Path] = None,
             prior_records: Optional[List[Dict[str, Any]]] = None, batch_size: int = 1000, progress: bool = True,
             quiet: bool = False, multirun: bool = False, announce: bool = True, isolate: bool = False,
             flush_seconds: Optional[float] = None):
    """Run ``attack`` over ``plan`` through the engine and summarize: returns (summary, records, best points).

    With ``run_dir`` the run folder gets records.csv and progress.json after every batch (batches
    already in ``prior_records`` are restored, not re-run) and, mid-batch, at most every
    ``flush_seconds`` (default :data:`robench.engine.FLUSH_SECONDS`), the pending rows of samples the
    oracle has finished (:class:`robench.engine.Flusher`); then summary.json / summary.md; the
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


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # outside a Hydra app (tests calling run_attack directly)
        return False
