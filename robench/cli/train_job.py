"""The ``train-defense`` Hydra job: train a recipe, evaluate it (robench/evaluation/robust_eval.py), save the checkpoint."""
from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any, Dict

import torch
from omegaconf import DictConfig, OmegaConf

import robench
from robench.cli.hydra_env import in_multirun
from robench.evaluation import results as R
from robench.models.checkpoint import checkpoint_path, save_checkpoint
from robench.config import resolve_device, validate_names, validate_train_config
from robench.data import load_dataset
from robench.defenses.base import TrainingRecipe
from robench.defenses.compose import defense_spec
from robench.errors import RobenchError
from robench.models.gbdt import find_gbdt, fit as fit_gbdt
from robench.models.sources import source_of, source_tag, train_summary
from robench.registry import DEFENSES, instantiate
from robench.training.loop import train
from robench.victim import build_architecture

log = logging.getLogger("robench")


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _plain(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]




def _checkpoint_model(cfg: DictConfig, splits, defense_name: str, what: str):
    """The run's (dataset, model) architecture with the weights ``defense=<defense_name>`` trained;
    a missing checkpoint fails in one line with the command that makes it (robench.victim's one loader)."""
    from robench.victim import model_from_checkpoint

    try:
        return model_from_checkpoint(cfg.checkpoint_dir, _plain(cfg.dataset), _plain(cfg.model), defense_name, splits)[0]
    except RobenchError as e:
        raise RobenchError(f"{what}: {e}") from None


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


def run_train(cfg: DictConfig, folder) -> Dict[str, Any]:
    """Train the recipe ``cfg`` describes; ``folder``: the run folder (:class:`~robench.evaluation.folder.RunFolder`),
    accepted (config.yaml written) once the config, data and model have passed their checks."""
    run_dir = folder.path
    from rich.console import Console
    from rich.table import Table

    from robench.defenses.base import TrainContext
    from robench.evaluation.robust_eval import robust_accuracy

    validate_train_config(cfg)  # every setting, before any work (robench/config.py)
    validate_names(cfg, ("dataset", "model"))
    device = resolve_device(cfg.device)
    spec = defense_spec(cfg.defense)
    dname = spec.recipe
    recipe = instantiate(DEFENSES, dname, spec.recipe_params, "defense")
    if not isinstance(recipe, TrainingRecipe):
        raise RobenchError(f"defense '{dname}' is an input transformation, not a training recipe: nothing to train")
    splits = load_dataset(cfg.dataset)
    dcfg, mcfg = _plain(cfg.dataset), _plain(cfg.model)
    recipe.bind(TrainContext(cfg=cfg, splits=splits, device=device,
                             load_model=lambda d: _checkpoint_model(cfg, splits, d, f"defense '{dname}' needs '{d}'")))
    torch.manual_seed(int(cfg.seed))
    model = build_architecture(mcfg, splits)[0]
    init_from = cfg.train.get("init_from")
    if init_from and init_from != dname:  # a sweep over defense=none,pgd_at may set it once for all
        model.load_state_dict(_checkpoint_model(cfg, splits, init_from, f"train.init_from={init_from}").state_dict())
    model = recipe.prepare_model(model)  # model surgery (conditional BN: robench/defenses/bn_methods.py)
    folder.accept()  # config.yaml + overrides.yaml: the run passed every check
    path = checkpoint_path(cfg.checkpoint_dir, dcfg, source_tag(mcfg) if source_of(mcfg) else mcfg, dname)
    state_path = path.with_name(path.name + ".resume")
    started = _now()
    quiet = bool(cfg.get("quiet", False))
    if find_gbdt(model) is not None:  # LightGBM trees (robench/models/gbdt.py): boosting, not the gradient loop
        m = fit_gbdt(model, splits, int(cfg.seed), dname)
    else:
        m = train(model, recipe, splits, cfg.train, device, int(cfg.seed), log_path=run_dir / "train_log.csv",
                  progress=bool(cfg.get("progress", True)) and not quiet and not in_multirun(), state_path=state_path,
                  fingerprint=_train_fingerprint(cfg))
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
    summary.update(train_summary(cfg, path, splits))  # model source, name, sha256s (models/sources.py)
    R.atomic_write_text(run_dir / "summary.json", __import__("json").dumps(summary, indent=2, default=str) + "\n")
    log.info("train-defense %s on %s/%s: train accuracy %.4f, clean accuracy %.4f, checkpoint %s", dname,
             dcfg["name"], mcfg["name"], m["train_accuracy"], m["clean_accuracy"], path)
    if quiet:
        return summary
    t = Table(title=f"train-defense {dname}: {dcfg['name']}/{mcfg['name']}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    rows = [("train accuracy", f"{m['train_accuracy']:.2%}"), ("test (clean) accuracy", f"{m['clean_accuracy']:.2%}")]
    if ev.get("skipped"):
        rows.append(("robust accuracy", f"skipped: {ev['skipped']}"))
    elif ev:
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
