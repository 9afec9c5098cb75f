"""The two Hydra jobs: ``attack`` and ``train-defense``.

Data flows one way (DESIGN.md): config -> dataset slice -> victim -> oracle -> attack -> records ->
summary. The attack only ever sees an :class:`~robench.oracle.Oracle`.
"""
from __future__ import annotations

import datetime as _dt
import inspect
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
from robench.defenses.base import TrainingRecipe
from robench.defenses.compose import DefendedModel, build_inputs, defense_spec
from robench.defenses.evaluate import DefenseRun, run_batches
from robench.errors import RobenchError
from robench.models import build_model
from robench.oracle import Oracle, distortion
from robench.registry import ATTACKS, DEFENSES
from robench.train import predict, train


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _plain(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def instantiate(registry, name: str, params: Dict[str, Any] | None, what: str):
    """``registry[name](**params)`` with unknown parameters reported as one line."""
    cls = registry.get(name)
    params = dict(params or {})
    sig = inspect.signature(cls)
    accepted = [p for p in sig.parameters if p not in ("self", "args", "kwargs")]
    unknown = [k for k in params if k not in sig.parameters]
    if unknown:
        raise RobenchError(f"{what} '{name}' has no parameter(s) {', '.join(unknown)}; valid: {', '.join(accepted)}")
    return cls(**params)


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
    if spec.inputs:
        model = DefendedModel(model, build_inputs(spec))
    return model.to(device).eval(), meta


def choose_targets(mode: Any, y: torch.Tensor, logits: torch.Tensor, num_classes: int,
                   generator: torch.Generator) -> torch.Tensor:
    """random: uniform over the other classes (seeded, never the label); least_likely: the clean
    prediction's least-likely class; an int: that class for every sample."""
    if mode == "random":
        off = torch.randint(1, num_classes, y.shape, generator=generator)
        return (y + off) % num_classes
    if mode == "least_likely":
        return logits.argmin(1).cpu()
    return torch.full_like(y, int(mode))


def run_attack(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    validate_common(cfg)
    validate_budget(cfg.budget, cfg.dataset.get("num_classes"))
    validate_names(cfg, ("dataset", "model", "attack"))
    defended = DefenseRun(cfg)  # validates the defense group (recipe, input transformations, detector)
    parse_shard(cfg.dataset.get("shard"))
    attack = instantiate(ATTACKS, cfg.attack.name, _plain(cfg.attack).get("params"), "attack")
    batch_size = int(cfg.attack.get("batch_size", 1000))
    if batch_size < 1:
        raise RobenchError(f"attack.batch_size must be >= 1, got {batch_size}")
    device = resolve_device(cfg.device)
    started = _now()
    R.atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    splits = load_dataset(cfg.dataset)
    validate_budget(cfg.budget, splits.num_classes)
    idx, x, y = eval_slice(splits, cfg.dataset.get("n_samples"), int(cfg.dataset.get("offset", 0)), cfg.dataset.get("shard"))
    model, meta = load_victim(cfg, splits, device)
    bpda, eot_samples = defended.prepare(model, attack, cfg.attack, splits)  # seeds, BPDA switch, EOT, detector
    logits = predict(model, x).cpu()
    clean_pred = logits.argmax(1)
    b = cfg.budget
    gen_cpu = torch.Generator().manual_seed(int(cfg.seed))
    targets = choose_targets(b.target, y, logits, splits.num_classes, gen_cpu) if b.targeted else None
    attacked = (clean_pred == y) if cfg.get("correct_only", True) else torch.ones_like(y, dtype=torch.bool)
    if targets is not None:
        attacked &= targets != y  # a target equal to the label is no attack at all

    records: List[Dict[str, Any]] = [
        {"index": int(i), "label": int(l), "target": -1 if targets is None else int(targets[k]),
         "clean_pred": int(p), "attacked": bool(a), "success": False, "queries": 0, "grad_queries": 0,
         "queries_at_success": -1, "l0": float("nan"), "l2": float("nan"), "linf": float("nan"), "seconds": 0.0}
        for k, (i, l, p, a) in enumerate(zip(idx, y, clean_pred, attacked))]
    R.write_records(run_dir / "records.csv", records)

    gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
    todo = attacked.nonzero().flatten()
    t_attack, recheck_failed = 0.0, 0
    with Progress(TextColumn(f"[bold]{cfg.attack.name}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("success {task.fields[rate]}"), TimeElapsedColumn(),
                  console=console, disable=not cfg.get("progress", True)) as bar:
        task = bar.add_task("attack", total=len(todo), rate="-")
        n_done = n_succ = 0
        for s in range(0, len(todo), batch_size):
            sel = todo[s:s + batch_size]
            oracle = Oracle(model, x[sel].to(device), y[sel].to(device), access=attack.access,
                            norm=b.norm, eps=b.eps, max_queries=int(b.max_queries),
                            targets=None if targets is None else targets[sel].to(device),
                            stop_on_success=not attack.minimizes_distortion,
                            recheck_repeats=defended.recheck_repeats, num_classes=splits.num_classes,
                            eot_samples=eot_samples if attack.access != "label" else 1,
                            confirm_repeats=defended.confirm_repeats)
            attack.run(oracle, gen)
            res = oracle.finalize()
            t_attack += res.seconds
            recheck_failed += int((res.claimed & ~res.success).sum())
            delta = res.best_x - x[sel]
            d = {k: distortion(delta, k) for k in ("l0", "l2", "linf")}
            for j, k in enumerate(sel.tolist()):
                r = records[k]
                r.update(success=bool(res.success[j]), queries=int(res.queries[j]), grad_queries=int(res.grad_queries[j]),
                         queries_at_success=int(res.queries_at_success[j]) if res.success[j] else -1,
                         seconds=float(res.seconds_at_success[j]) if res.success[j] else res.seconds)
                if res.adversarial[j]:
                    r.update(l0=float(d["l0"][j]), l2=float(d["l2"][j]), linf=float(d["linf"][j]))
            defended.after_batch(sel, res)
            R.write_records(run_dir / "records.csv", records)  # after every batch: nothing finished is lost
            n_done += len(sel)
            n_succ += int(res.success.sum())
            bar.update(task, advance=len(sel), rate=f"{n_succ / n_done:.1%}")

    budget_label = f"{b.norm}_{b.eps}" + ("_targeted" if b.targeted else "")
    summary = R.summarize(records, {
        "attack": cfg.attack.name, "model": cfg.model.name, "dataset": cfg.dataset.name, "defense": defended.label,
        "budget": budget_label, "norm": b.norm, "eps": b.eps, "max_queries": int(b.max_queries),
        "targeted": bool(b.targeted), "target": b.target if b.targeted else None, "seconds": t_attack,
        "recheck_failed": recheck_failed, "device": str(device), "seed": int(cfg.seed),
        "robench_version": robench.__version__, "started": started, "finished": _now()})
    summary["checkpoint"] = meta.get("path", meta.get("source"))
    defended.finish(summary, records, x, run_dir, rerun=lambda bpda_, eot_, confirm_: run_batches(
        model, instantiate(ATTACKS, cfg.attack.name, _plain(cfg.attack).get("params"), "attack"), x[todo], y[todo],
        None if targets is None else targets[todo], budget=b, batch_size=batch_size, num_classes=splits.num_classes,
        seed=int(cfg.seed), device=device, recheck_repeats=defended.recheck_repeats, eot_samples=eot_,
        confirm_repeats=confirm_))
    R.write_summary(run_dir, summary)
    R.print_summary(summary)
    defended.report(run_dir, summary)
    return summary


def run_train(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

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
    torch.manual_seed(int(cfg.seed))
    model = build_model(mcfg["name"], splits, mcfg.get("params"))
    started = _now()
    m = train(model, recipe, splits, cfg.train, device, int(cfg.seed), log_path=run_dir / "train_log.csv",
              progress=bool(cfg.get("progress", True)))
    path = checkpoint_path(cfg.checkpoint_dir, dcfg, mcfg, dname)
    meta = {"robench_version": robench.__version__, "model": mcfg["name"], "model_params": dict(mcfg.get("params") or {}),
            "dataset": dcfg["name"], "dataset_source": dcfg.get("source"), "defense": dname,
            "clean_accuracy": m["clean_accuracy"], "train_accuracy": m["train_accuracy"], "epochs": m["epochs"],
            "seed": int(cfg.seed), "created": _now(), "config": OmegaConf.to_yaml(cfg, resolve=True)}
    save_checkpoint(path, model, meta)
    summary = {"schema_version": R.SCHEMA_VERSION, "command": "train-defense", "model": mcfg["name"],
               "dataset": dcfg["name"], "defense": dname, "clean_accuracy": m["clean_accuracy"],
               "train_accuracy": m["train_accuracy"], "epochs": m["epochs"], "seconds": m["seconds"],
               "checkpoint": str(path), "device": str(device), "seed": int(cfg.seed),
               "robench_version": robench.__version__, "started": started, "finished": _now()}
    R.atomic_write_text(run_dir / "summary.json", __import__("json").dumps(summary, indent=2) + "\n")
    t = Table(title=f"train-defense {dname}: {dcfg['name']}/{mcfg['name']}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in (("train accuracy", f"{m['train_accuracy']:.2%}"), ("test (clean) accuracy", f"{m['clean_accuracy']:.2%}"),
                 ("epochs", str(m["epochs"])), ("seconds", f"{m['seconds']:.1f}"), ("checkpoint", str(path))):
        t.add_row(k, v)
    Console().print(t)
    return summary
