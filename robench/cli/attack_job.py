"""The ``robench attack`` Hydra job: config -> dataset slice -> victim -> prepared run -> runner (DESIGN.md)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

import torch
from omegaconf import DictConfig, OmegaConf

from robench.attacks.base import AttackContext, ClassImages
from robench.cli.hydra_env import in_multirun
from robench.config import resolve_device, validate_attack_config, validate_budget, validate_names
from robench.data import eval_slice, load_dataset, parse_shard
from robench.data.base import eval_indices
from robench.errors import RobenchError
from robench.evaluation import results as R
from robench.evaluation.engine import Plan, Referee, choose_targets, expand_all_targets, prepare_attack
from robench.evaluation.folder import write_run_config
from robench.evaluation.protocols import Evaluation
from robench.evaluation.runner import _now, prefix_with_n_correct, prior_run, run_plan
from robench.models.sources import victim_summary
from robench.registry import ATTACKS, MODELS, instantiate
from robench.training.loop import predict
from robench.victim import load_victim, refuse_gradients, surrogate_loader

log = logging.getLogger("robench")


def _plain(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


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
                             progress=bool(cfg.get("progress", True)) and not quiet, quiet=quiet, multirun=in_multirun(),
                             isolate=isolate)
    return summary
