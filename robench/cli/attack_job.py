"""The ``robench attack`` Hydra job: config -> run spec -> dataset slice -> victim -> prepared run -> runner.

Every check comes before anything is written: the run spec (:class:`~robench.evaluation.spec.RunSpec`,
the same validation the CLI's pre-validation and the Python API call), the run folder (a folder holding
another config is refused), the data, the victim and the attack (:func:`~robench.evaluation.prepare.prepare_run`).
Only then does :meth:`RunFolder.accept` write ``config.yaml``; a refusal before that leaves the folder as
it was (the CLI calls :meth:`RunFolder.abandon`).
"""
from __future__ import annotations

import logging
from typing import Any, Dict

from omegaconf import DictConfig, OmegaConf

from robench.attacks.base import AttackContext, ClassImages
from robench.cli.hydra_env import in_multirun
from robench.config import resolve_device, validate_attack_config
from robench.data import eval_slice, load_dataset
from robench.data.base import eval_indices
from robench.evaluation.folder import RunFolder
from robench.evaluation.prepare import Slice, prepare_run
from robench.evaluation.runner import ConsoleDisplay, Runner
from robench.evaluation.spec import RunSpec
from robench.models.sources import victim_summary
from robench.victim import load_victim, speed_up, surrogate_loader

log = logging.getLogger("robench")


def _plain(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def run_attack(cfg: DictConfig, folder: RunFolder) -> Dict[str, Any]:
    """Run the attack ``cfg`` describes into ``folder`` (a :class:`RunFolder`, nothing written yet)."""
    validate_attack_config(cfg)  # every setting of every group, before any work (robench/config.py)
    spec = RunSpec.from_config(cfg)
    quiet = bool(cfg.get("quiet", False))
    prior_summary, prior_records = folder.prior()
    if prior_summary is not None:  # a finished run: skip it (re-running an interrupted sweep)
        log.info("%s: complete already (summary.json), skipped", folder.path)
        if not quiet:
            from rich.console import Console

            Console(stderr=True).print(f"[dim]skipped {folder.path}: complete already[/dim]")
        return prior_summary
    device = resolve_device(cfg.device)
    splits = load_dataset(cfg.dataset)
    d = cfg.dataset
    n_samples, offset = d.get("n_samples"), int(d.get("offset", 0))
    idx, x, y = eval_slice(splits, n_samples, offset, d.get("shard"), unit=spec.attack.batch_size)
    data = Slice(x, y, idx, positions=idx - offset, n_slice=len(eval_indices(len(splits.test), n_samples, offset, None)),
                 domain=splits.domain)
    model, meta = load_victim(cfg, splits, device)
    model = speed_up(model, _plain(cfg.victim_speed) if cfg.get("victim_speed") is not None else None)
    context = AttackContext(device=device, class_images=ClassImages(splits.train),
                            load_surrogate=surrogate_loader(cfg.checkpoint_dir, _plain(cfg.dataset), splits, device))
    victim = {**victim_summary(cfg, meta, splits), **({"model_told": meta["model_told"]} if meta.get("model_told") else {})}
    prep = prepare_run(spec, model, data, device=device, num_classes=splits.num_classes, splits=splits, context=context,
                       meta={"model": cfg.model.name, "dataset": cfg.dataset.name,
                             "checkpoint": meta.get("path", meta.get("source")), "victim": victim})
    try:
        folder.accept()  # config.yaml + overrides.yaml: the run passed every check
        display = ConsoleDisplay(progress=bool(cfg.get("progress", True)), quiet=quiet, multirun=in_multirun())
        save = tuple(cfg.get("adversarial_formats") or ["npz"]) if cfg.get("save_adversarial", False) else ()
        summary, _, _ = Runner(prep, folder, display, save_adversarial=save).run(prior_records)
    finally:
        prep.close()
    return summary
