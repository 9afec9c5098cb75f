"""The two Hydra jobs: ``attack`` and ``train-defense``.

Data flows one way (DESIGN.md): config -> dataset slice -> victim -> oracle -> attack -> records ->
summary. The attack only ever sees an :class:`~robench.oracle.Oracle`.
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
from omegaconf import DictConfig, OmegaConf

import robench
from robench import results as R
from robench.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint, train_command
from robench.config import resolve_device, validate_budget, validate_common, validate_names
from robench.data import eval_slice, load_dataset, parse_shard
from robench.data.base import eval_indices
from robench.defenses.base import TrainingRecipe
from robench.defenses.compose import DefendedModel, build_inputs, defense_spec
from robench.defenses.evaluate import DefenseRun, run_batches
from robench.errors import RobenchError
from robench.models import build_model
from robench.oracle import Oracle, distortion
from robench.registry import ATTACKS, DEFENSES, instantiate
from robench.train import predict, train


#: robench's own messages: Hydra's job logging sends them to <run dir>/<job name>.log (README, "Logs")
log = logging.getLogger("robench")


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _plain(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def load_victim(cfg: DictConfig, splits, device: torch.device):
    """Model (+ weights from the conventional checkpoint of its training recipe) for (dataset, model,
    defense), behind the defense's input transformations if any (robench/defenses/compose.py), in eval mode."""
    spec = defense_spec(cfg.defense)
    dcfg, mcfg, dname = _plain(cfg.dataset), _plain(cfg.model), spec.recipe
    model = build_model(mcfg["name"], splits, mcfg.get("params"))
    meta: Dict[str, Any] = {}
    if (mcfg.get("params") or {}).get("pretrained") and dname == "none":
        meta = {"source": "pretrained"}
    else:
        path = checkpoint_path(cfg.checkpoint_dir, dcfg, mcfg, dname)
        meta = load_checkpoint(path, model, remake=train_command(dcfg, mcfg, dname, cfg.checkpoint_dir))
        meta["path"] = str(path)
        if meta.get("model_surgery"):  # conditional BN (bn_methods.py): the eps / mix the model runs at
            from robench.models.conditional_bn import configure
            meta["model_told"] = configure(model, spec.recipe_params or {})
    if spec.inputs:
        model = DefendedModel(model, build_inputs(spec))
    return model.to(device).eval(), meta


def choose_targets(mode: Any, y: torch.Tensor, logits: torch.Tensor, num_classes: int,
                   generator: torch.Generator, positions: torch.Tensor | None = None,
                   n_slice: int | None = None) -> torch.Tensor:
    """random: uniform over the other classes (seeded, never the label); least_likely: the clean
    prediction's least-likely class; an int: that class for every sample.

    Random targets are drawn for the whole unsharded slice (``n_slice`` samples) and picked at this
    shard's ``positions``, so a sample gets the same target whether or not the slice is sharded."""
    if mode == "random":
        if positions is None:
            positions, n_slice = torch.arange(len(y)), len(y)
        off = torch.randint(1, num_classes, (int(n_slice),), generator=generator)[positions]
        return (y + off) % num_classes
    if mode == "least_likely":
        return logits.argmin(1).cpu()
    return torch.full_like(y, int(mode))


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch ``batch``'s generator: a hash of (run seed, global batch number), so a batch
    draws the same random numbers whichever shard or resumed process attacks it (README, "Sharding")."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(batch)]).generate_state(1, dtype=np.uint64)[0])


def _prior_run(run_dir: Path, cfg_plain: Dict[str, Any], resume: bool):
    """What an earlier run in this folder left: (summary or None, records of completed batches).

    With ``resume`` (the default) a folder holding the same config continues where it stopped; a
    folder holding a different config is refused (one line naming the keys that differ)."""
    import json

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
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    quiet = bool(cfg.get("quiet", False))
    multirun = _in_multirun()
    validate_common(cfg)
    validate_budget(cfg.budget, cfg.dataset.get("num_classes"))
    validate_names(cfg, ("dataset", "model", "attack"))
    defended = DefenseRun(cfg)  # validates the defense group (recipe, input transformations, detector)
    parse_shard(cfg.dataset.get("shard"))
    n_correct = cfg.get("n_correct")
    if n_correct is not None and (not isinstance(n_correct, int) or isinstance(n_correct, bool) or n_correct < 1):
        raise RobenchError(f"n_correct must be an integer >= 1 or null, got '{n_correct}'")
    if n_correct is not None and cfg.dataset.get("shard"):
        raise RobenchError("n_correct cuts the slice after its n-th correct sample and cannot be combined with "
                           "dataset.shard: use dataset.n_samples with shards")
    def make_attack():
        return instantiate(ATTACKS, cfg.attack.name, _plain(cfg.attack).get("params"), "attack")

    attack = make_attack()
    batch_size = int(cfg.attack.get("batch_size", 1000))
    if batch_size < 1:
        raise RobenchError(f"attack.batch_size must be >= 1, got {batch_size}")
    device = resolve_device(cfg.device)
    started = _now()
    prior_summary, prior_records = _prior_run(run_dir, _plain(cfg), bool(cfg.get("resume", True)))
    if prior_summary is not None:  # a finished run: skip it (re-running an interrupted sweep)
        log.info("%s: complete already (summary.json), skipped", run_dir)
        if not quiet:
            console.print(f"[dim]skipped {run_dir}: complete already[/dim]")
        return prior_summary
    R.atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    splits = load_dataset(cfg.dataset)
    validate_budget(cfg.budget, splits.num_classes)
    n_samples, offset = cfg.dataset.get("n_samples"), int(cfg.dataset.get("offset", 0))
    idx, x, y = eval_slice(splits, n_samples, offset, cfg.dataset.get("shard"), unit=batch_size)
    pos = idx - offset  # positions in the full, unsharded slice: batch b = positions [b*B, (b+1)*B)
    n_slice = len(eval_indices(len(splits.test), n_samples, offset, None))
    model, meta = load_victim(cfg, splits, device)
    bpda, eot_samples = defended.prepare(model, attack, cfg.attack, splits)  # seeds, BPDA switch, EOT, detector
    context = {"cfg": cfg, "splits": splits, "device": device, "num_classes": splits.num_classes}
    if hasattr(attack, "bind"):  # hook: attacks that need the job's context (transfer's surrogate,
        # hard-label attacks' target-class training images)
        attack.bind(context)
    logits = predict(model, x).cpu()
    clean_pred = logits.argmax(1)
    if n_correct is not None:  # the slice ends at its n-th originally-correct sample
        cut = prefix_with_n_correct(clean_pred == y, n_correct)
        idx, x, y, logits, clean_pred = idx[:cut], x[:cut], y[:cut], logits[:cut], clean_pred[:cut]
        pos, n_slice = pos[:cut], cut
    b = cfg.budget
    gen_cpu = torch.Generator().manual_seed(int(cfg.seed))
    targets = (choose_targets(b.target, y, logits, splits.num_classes, gen_cpu, pos, n_slice)
               if b.targeted else None)
    attacked = (clean_pred == y) if cfg.get("correct_only", True) else torch.ones_like(y, dtype=torch.bool)
    if targets is not None:
        attacked &= targets != y  # a target equal to the label is no attack at all

    batch_of = (pos // batch_size).tolist()
    # anytime curve (hard-label / minimal-distortion attacks): best distortion at these query counts
    cps = b.get("checkpoints")
    cps = sorted({int(c) for c in cps}) if cps is not None else (
        R.default_checkpoints(int(b.max_queries)) if attack.minimizes_distortion else [])

    records: List[Dict[str, Any]] = [
        {"index": int(i), "label": int(l), "target": -1 if targets is None else int(targets[k]),
         "clean_pred": int(p), "attacked": bool(a), "success": False, "queries": 0, "grad_queries": 0,
         "queries_at_success": -1, "l0": float("nan"), "l2": float("nan"), "linf": float("nan"), "seconds": 0.0,
         "batch": batch_of[k], "batch_seconds": 0.0, "recheck_failed": False,
         **{f"{R.CHECKPOINT_PREFIX}{c}": float("nan") for c in cps}, **defended.record_columns()}
        for k, (i, l, p, a) in enumerate(zip(idx, y, clean_pred, attacked))]
    batches: Dict[int, List[int]] = {}
    for k, bt in enumerate(batch_of):
        batches.setdefault(bt, []).append(k)
    done = _restore(records, batches, prior_records)
    resumed = len(done)
    if done:
        log.info("resuming %s: %d of %d batches complete, %d to go", run_dir, len(done), len(batches),
                 len(batches) - len(done))
        if not quiet and not multirun:
            console.print(f"resuming: {len(done)} of {len(batches)} batches already complete")
    log.info("%s on %s/%s/%s: %d samples (indices %d..%d), %d batch(es) of up to %d, seed %d",
             cfg.attack.name, cfg.dataset.name, cfg.model.name, defended.label, len(idx), int(idx[0]),
             int(idx[-1]), len(batches), batch_size, int(cfg.seed))

    def flush():  # rows of completed batches only, atomically: nothing finished is lost, nothing doubled
        R.write_records(run_dir / "records.csv", [records[k] for bt in sorted(done) for k in batches[bt]])
        n_att = sum(records[k]["attacked"] for bt in done for k in batches[bt])
        n_succ = sum(records[k]["success"] for bt in done for k in batches[bt])
        R.atomic_write_text(run_dir / "progress.json", __import__("json").dumps({
            "batches_done": len(done), "batches_total": len(batches), "samples_done": sum(len(batches[bt]) for bt in done),
            "samples_total": len(records), "attacked_done": int(n_att), "success": int(n_succ),
            "status": "done" if len(done) == len(batches) else "running", "attack": cfg.attack.name}) + "\n")

    def new_oracle(att, sel: torch.Tensor, eot: int, confirm: int, checkpoints=()) -> Oracle:
        """The referee for rows ``sel`` of the slice (the main run, and the adaptive report's re-run)."""
        return Oracle(model, x[sel].to(device), y[sel].to(device), access=att.access, norm=b.norm, eps=b.eps,
                      max_queries=int(b.max_queries), targets=None if targets is None else targets[sel].to(device),
                      stop_on_success=not att.minimizes_distortion, recheck_repeats=defended.recheck_repeats,
                      num_classes=splits.num_classes, eot_samples=eot if att.access != "label" else 1,
                      checkpoints=checkpoints, confirm_repeats=confirm)

    flush()
    todo_total = int(attacked.sum())
    with Progress(TextColumn(f"[bold]{cfg.attack.name}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("success {task.fields[rate]}"), TimeElapsedColumn(),
                  console=console, disable=quiet or multirun or not cfg.get("progress", True)) as bar:
        n_done = sum(records[k]["attacked"] for bt in done for k in batches[bt])
        n_succ = sum(records[k]["success"] for bt in done for k in batches[bt])
        task = bar.add_task("attack", total=todo_total, completed=n_done,
                            rate=f"{n_succ / n_done:.1%}" if n_done else "-")
        for bt in sorted(batches):
            if bt in done:
                continue
            rows = batches[bt]
            sel = torch.tensor([k for k in rows if records[k]["attacked"]], dtype=torch.long)
            gen = torch.Generator(device=device).manual_seed(batch_seed(int(cfg.seed), bt))
            batch_secs = 0.0
            if len(sel):
                oracle = new_oracle(attack, sel, eot_samples, defended.confirm_repeats, cps)
                attack.run(oracle, gen)
                res = oracle.finalize()
                batch_secs = res.seconds
                delta = res.best_x - x[sel]
                d = {k: distortion(delta, k) for k in ("l0", "l2", "linf")}
                for j, k in enumerate(sel.tolist()):
                    r = records[k]
                    r.update(success=bool(res.success[j]), queries=int(res.queries[j]), grad_queries=int(res.grad_queries[j]),
                             queries_at_success=int(res.queries_at_success[j]) if res.success[j] else -1,
                             seconds=float(res.seconds_at_success[j]) if res.success[j] else res.seconds,
                             recheck_failed=bool(res.claimed[j] and not res.success[j]))
                    if res.adversarial[j]:
                        r.update(l0=float(d["l0"][j]), l2=float(d["l2"][j]), linf=float(d["linf"][j]))
                    for c, v in zip(res.checkpoints, res.dist_at[j].tolist()):
                        r[f"{R.CHECKPOINT_PREFIX}{c}"] = v if v != float("inf") else float("nan")
                for j, extra in enumerate(defended.after_batch(res)):  # e.g. the detector's score of the point
                    records[sel[j].item()].update(extra)
            for k in rows:
                records[k]["batch_seconds"] = batch_secs
            done.add(bt)
            flush()  # after every batch: nothing finished is lost
            n_done += len(sel)
            n_succ += int(sum(records[k]["success"] for k in sel.tolist()))
            log.info("batch %d done (%d/%d): %d attacked, %d successes so far of %d, %.2fs", bt, len(done),
                     len(batches), len(sel), n_succ, n_done, batch_secs)
            bar.update(task, advance=len(sel), rate=f"{n_succ / n_done:.1%}" if n_done else "-")

    totals = R.record_totals(records)
    budget_label = f"{b.norm}_{b.eps}" + ("_targeted" if b.targeted else "")
    summary = R.summarize(records, {
        "attack": cfg.attack.name, "model": cfg.model.name, "dataset": cfg.dataset.name, "defense": defended.label,
        "budget": budget_label, "norm": b.norm, "eps": b.eps, "max_queries": int(b.max_queries),
        "targeted": bool(b.targeted), "target": b.target if b.targeted else None, "seconds": totals["seconds"],
        "recheck_failed": totals["recheck_failed"], "device": str(device), "seed": int(cfg.seed),
        "robench_version": robench.__version__, "started": started, "finished": _now()})
    summary["checkpoint"] = meta.get("path", meta.get("source"))
    if meta.get("model_told"):
        summary["model_told"] = meta["model_told"]
    summary["access"] = attack.access
    summary["shard"] = cfg.dataset.get("shard")
    summary["batch_size"] = batch_size
    summary["resumed_batches"] = resumed
    summary["host"], summary["pid"] = __import__("socket").gethostname(), __import__("os").getpid()
    if hasattr(attack, "summary_extra"):  # hook: attack-specific figures (e.g. ensemble contributions)
        summary.update(attack.summary_extra())

    def rerun(bpda_: bool, eot_: int, confirm_: int):  # the adaptive report's second, non-adaptive run
        again = make_attack()
        if hasattr(again, "bind"):
            again.bind(context)
        plan = [(bt, torch.tensor([k for k in batches[bt] if records[k]["attacked"]], dtype=torch.long))
                for bt in sorted(batches)]
        return run_batches(again, plan, lambda sel: new_oracle(again, sel, eot_, confirm_),
                           seed_of=lambda bt: batch_seed(int(cfg.seed), bt), device=device)

    defended.finish(summary, records, x, run_dir, rerun=rerun)
    R.write_summary(run_dir, summary)
    log.info("finished: success rate %s, robust accuracy %s\n%s", summary["success_rate"],
             summary["robust_accuracy"], R.summary_markdown(summary))
    if quiet:
        pass
    elif multirun:
        print(R.one_line(summary, run_dir), flush=True)
    else:
        R.print_summary(summary)
    defended.report(run_dir, summary, show=not (quiet or multirun))
    return summary


def _restore(records: List[Dict[str, Any]], batches: Dict[int, List[int]], prior: List[Dict[str, Any]]) -> set:
    """Copy the rows of batches an earlier, interrupted process completed into ``records``; returns
    the set of those batches. A batch counts only when all its rows are there and match this slice."""
    if not prior:
        return set()
    by_index = {int(r["index"]): r for r in prior}
    done = set()
    for bt, rows in batches.items():
        olds = [by_index.get(records[k]["index"]) for k in rows]
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
def _checkpoint_model(cfg: DictConfig, splits, defense_name: str, what: str):
    """The run's (dataset, model) architecture with the weights ``defense=<defense_name>`` trained;
    a missing checkpoint fails in one line with the command that makes it."""
    dcfg, mcfg = _plain(cfg.dataset), _plain(cfg.model)
    model = build_model(mcfg["name"], splits, mcfg.get("params"))
    path = checkpoint_path(cfg.checkpoint_dir, dcfg, mcfg, defense_name)
    if not path.exists():
        raise RobenchError(f"{what}: no checkpoint at {path}; create it first with "
                           f"`{train_command(dcfg, mcfg, defense_name, cfg.checkpoint_dir)}`")
    load_checkpoint(path, model, remake=train_command(dcfg, mcfg, defense_name, cfg.checkpoint_dir))
    return model


def _train_fingerprint(cfg: DictConfig) -> str:
    """What decides the weights (resume only continues a run with the same one)."""
    import hashlib

    full = _plain(cfg)
    keep = {k: full.get(k) for k in ("dataset", "model", "defense", "train", "seed")}
    for k in ("resume", "amp", "channels_last"):
        keep["train"].pop(k, None)
    for k in ("n_samples", "offset", "shard"):  # evaluation slice only
        keep["dataset"].pop(k, None)
    return hashlib.sha256(repr(sorted(keep.items())).encode()).hexdigest()[:16]


def run_train(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from robench.defenses.base import TrainContext
    from robench.robust_eval import robust_accuracy

    validate_common(cfg)
    validate_names(cfg, ("dataset", "model"))
    device = resolve_device(cfg.device)
    spec = defense_spec(cfg.defense)
    dname = spec.recipe
    if spec.inputs or spec.detector:
        extra = ", ".join([n for n, _ in spec.inputs] + ([spec.detector[0]] if spec.detector else []))
        raise RobenchError(f"defense={spec.label}: {extra} act(s) at attack time, not in training; train the model "
                           f"behind it with defense={dname}")
    recipe = instantiate(DEFENSES, dname, spec.recipe_params, "defense")
    if not isinstance(recipe, TrainingRecipe):
        raise RobenchError(f"defense '{dname}' is an input transformation, not a training recipe: nothing to train")
    R.atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    splits = load_dataset(cfg.dataset)
    dcfg, mcfg = _plain(cfg.dataset), _plain(cfg.model)
    recipe.bind(TrainContext(cfg=cfg, splits=splits, device=device,
                             load_model=lambda d: _checkpoint_model(cfg, splits, d, f"defense '{dname}' needs '{d}'")))
    torch.manual_seed(int(cfg.seed))
    model = build_model(mcfg["name"], splits, mcfg.get("params"))
    init_from = cfg.train.get("init_from")
    if init_from and init_from != dname:  # a sweep over defense=none,pgd_at may set it once for all
        model.load_state_dict(_checkpoint_model(cfg, splits, init_from, f"train.init_from={init_from}").state_dict())
    model = recipe.prepare_model(model)  # model surgery (conditional BN: robench/defenses/bn_methods.py)
    path = checkpoint_path(cfg.checkpoint_dir, dcfg, mcfg, dname)
    state_path = path.with_name(path.name + ".resume")
    started = _now()
    quiet = bool(cfg.get("quiet", False))
    m = train(model, recipe, splits, cfg.train, device, int(cfg.seed), log_path=run_dir / "train_log.csv",
              progress=bool(cfg.get("progress", True)) and not quiet and not _in_multirun(), state_path=state_path, fingerprint=_train_fingerprint(cfg))
    ev = robust_accuracy(model, splits, cfg.get("eval") or {}, cfg.budget, int(cfg.seed), device) if "budget" in cfg else {}
    robust = {"robust_accuracy": ev.get("robust_accuracy"), "eval_clean_accuracy": ev.get("clean_accuracy"),
              "robust_eval": {k: v for k, v in ev.items() if k not in ("clean_accuracy", "robust_accuracy")} or None}
    base = {"model": mcfg["name"], "model_params": dict(mcfg.get("params") or {}), "dataset": dcfg["name"],
            "defense": dname, "defense_params": spec.recipe_params or {},
            "clean_accuracy": m["clean_accuracy"], "train_accuracy": m["train_accuracy"],
            "train_adv_accuracy": m["train_adv_accuracy"], **robust, "epochs": m["epochs"],
            "early_stopped_at_epoch": m["early_stopped_at_epoch"],
            "train_seconds": m["seconds"], "init_from": init_from if init_from != dname else None, "seed": int(cfg.seed)}
    meta = {"robench_version": robench.__version__, "dataset_source": dcfg.get("source"), **base,
            "created": _now(), "config": OmegaConf.to_yaml(cfg, resolve=True)}
    save_checkpoint(path, model, meta)
    state_path.unlink(missing_ok=True)  # the checkpoint is safe: nothing left to resume
    summary = {"schema_version": R.SCHEMA_VERSION, "command": "train-defense", **base, "seconds": m["seconds"],
               "resumed_from_epoch": m["resumed_from_epoch"], "checkpoint": str(path), "device": str(device),
               "robench_version": robench.__version__, "started": started, "finished": _now()}
    R.atomic_write_text(run_dir / "summary.json", __import__("json").dumps(summary, indent=2, default=str) + "\n")
    log.info("train-defense %s on %s/%s: train accuracy %.4f, clean accuracy %.4f, checkpoint %s", dname,
             dcfg["name"], mcfg["name"], m["train_accuracy"], m["clean_accuracy"], path)
    if quiet:
        return summary
    t = Table(title=f"train-defense {dname}: {dcfg['name']}/{mcfg['name']}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    rows = [("train accuracy", f"{m['train_accuracy']:.2%}"), ("test (clean) accuracy", f"{m['clean_accuracy']:.2%}")]
    if ev:
        p = ev["params"]
        rows.append((f"robust accuracy ({ev['attack']}-{p.get('steps', '?')}, {ev['norm']} {ev['eps']}, "
                     f"{ev['n_samples']} test images)", f"{ev['robust_accuracy']:.2%}"))
    if m["early_stopped_at_epoch"] is not None:
        rows.append(("early stop", f"epoch {m['early_stopped_at_epoch'] + 1} overfitted: kept epoch {m['early_stopped_at_epoch']}"))
    rows += [("epochs", str(m["epochs"])), ("training seconds", f"{m['seconds']:.1f}"), ("checkpoint", str(path))]
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)
    return summary
