"""The victim: a model (+ weights of its training recipe, + input defenses) and its pre-flight checks.

A victim without input gradients (``model=gbdt``) refuses gradient attacks before any work
(:func:`refuse_gradients`).

:func:`load_victim` is what ``robench attack`` and :func:`robench.load_victim` use to turn (dataset,
model, defense) into a module in eval mode. :func:`preflight` checks any victim before it is attacked,
as AutoAttack's ``checks.py`` does [croce2020]: randomness measured by repeated forward passes (not
trusted from a defense's flag) and a warning when the outputs look like probabilities rather than logits;
:func:`check_inputs` refuses inputs that are not finite or lie outside the domain's box.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from robench.domain import IMAGE, Domain
from robench.errors import InputError, RobenchError

log = logging.getLogger("robench")


def _plain(cfg) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def build_architecture(mcfg: Dict[str, Any], splits) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The network a model config names, with no checkpoint: a registered architecture, or a model source
    with its own weights (robench/models/sources.py). Returns (model, metadata)."""
    from robench.models import build_model
    from robench.models.sources import build_source, source_of

    if source_of(mcfg):
        return build_source(mcfg, splits)
    return build_model(mcfg["name"], splits, mcfg.get("params")), {}


def model_from_checkpoint(checkpoint_dir: Any, dcfg: Dict[str, Any], mcfg: Dict[str, Any], defense: str, splits, *,
                          path: Optional[Path] = None, remake: Optional[str] = None) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The one loader: the architecture of ``mcfg`` with the weights recipe ``defense`` trained, from the
    conventional checkpoint under ``checkpoint_dir`` (or ``path``), the model surgery the checkpoint
    records applied first (conditional BN, robench/models/conditional_bn.py). Returns (model, metadata
    with ``path``). A missing or unreadable checkpoint fails in one line naming the command that makes it."""
    from robench.models.checkpoint import apply_state, checkpoint_path, read_checkpoint, train_command
    from robench.models.sources import source_of, source_tag

    model, meta = build_architecture(mcfg, splits)
    tag = source_tag(mcfg) if source_of(mcfg) else mcfg
    path = Path(path) if path is not None else checkpoint_path(checkpoint_dir, dcfg, tag, defense)
    if remake is None:
        remake = (f"robench train-defense ... model={mcfg['source']} defense={defense} (same model.* and dataset "
                  f"options)" if source_of(mcfg) else train_command(dcfg, mcfg, defense, checkpoint_dir))
    state, ck = read_checkpoint(path, remake)
    if ck.get("model_surgery") and not getattr(model, "robench_surgery", None):
        from robench.models.conditional_bn import apply_surgery

        apply_surgery(model, ck["model_surgery"])
    apply_state(model, state, path, ck, remake)
    return model, {**meta, **ck, "path": str(path)}


def load_victim(cfg: DictConfig, splits, device: torch.device):
    """Model (+ weights from the conventional checkpoint of its training recipe) for (dataset, model,
    defense), behind the defense's input transformations if any (robench/defenses/compose.py), in eval mode."""
    from robench.defenses.compose import DefendedModel, build_inputs, defense_spec
    from robench.models.sources import sha256_file, source_of

    spec = defense_spec(cfg.defense)
    dcfg, mcfg, dname = _plain(cfg.dataset), _plain(cfg.model), spec.recipe
    if source_of(mcfg) and dname == "none":  # your own model, TorchScript, ONNX, the zoos: their own weights
        model, meta = build_architecture(mcfg, splits)
    elif (mcfg.get("params") or {}).get("pretrained") and dname == "none":
        model, meta = build_architecture(mcfg, splits)
        meta = {"source": "pretrained"}
    else:
        model, meta = model_from_checkpoint(cfg.checkpoint_dir, dcfg, mcfg, dname, splits)
        if source_of(mcfg):
            meta.update(weights_file=meta["path"], weights_sha256=sha256_file(meta["path"]))
        if meta.get("model_surgery"):  # conditional BN (bn_methods.py): the eps / mix the model runs at
            from robench.models.conditional_bn import configure
            meta["model_told"] = configure(model, spec.recipe_params or {})
    if spec.inputs:
        model = DefendedModel(model, build_inputs(spec))
    return model.to(device).eval(), meta


#: the opt-in ways to make the victim's forward faster (``victim_speed.*``; docs/gpu.md, "A faster victim")
SPEED_KEYS = ("channels_last", "compile", "cudnn_benchmark")


def check_speed(speed: Any, where: str = "victim_speed") -> Dict[str, bool]:
    """``victim_speed`` as a dict of booleans (unknown keys and non-booleans refused in one line)."""
    from robench.values import check_bool

    if speed is None:
        return {}
    if not isinstance(speed, dict):
        raise RobenchError(f"{where} must map {', '.join(SPEED_KEYS)} to true/false, got {speed!r}")
    bad = [k for k in speed if k not in SPEED_KEYS]
    if bad:
        raise RobenchError(f"{where}.{bad[0]} is not a setting; valid: {', '.join(SPEED_KEYS)}")
    for k, v in speed.items():
        check_bool(f"{where}.{k}", v)
    return {k: bool(v) for k, v in speed.items() if v}


def speed_up(model: torch.nn.Module, speed: Optional[Dict[str, Any]]) -> torch.nn.Module:
    """The victim with the forward-speed options the user asked for (all off by default), in place;
    ``speed`` as :func:`check_speed` passed it (the CLI's validated config, the API's checked argument):

    * ``channels_last``: the 4-d weights in channels-last memory format (convolutions then run NHWC;
      inputs stay NCHW, torch converts at the first convolution); a model without 4-d weights is left alone;
    * ``compile``: ``nn.Module.compile()`` (torch.compile of the module's forward, in place: the module
      keeps its type, so every check that looks at the victim sees the same object; the first batches
      pay the compilation);
    * ``cudnn_benchmark``: ``torch.backends.cudnn.benchmark = True`` (CUDA only: cuDNN times its
      convolution algorithms for each new input shape and keeps the fastest).

    Each changes the victim's arithmetic (summation order), so logits move in their last bits and an
    attack's path can differ from the default's; docs/gpu.md gives the measured difference. The
    referee counts and certifies as always (the final re-check runs the same sped-up victim)."""
    speed = speed or {}
    if speed.get("cudnn_benchmark"):
        torch.backends.cudnn.benchmark = True
    if speed.get("channels_last") and any(p.dim() == 4 for p in model.parameters()):
        model.to(memory_format=torch.channels_last)
    if speed.get("compile"):
        model.compile()
    return model


def surrogate_loader(checkpoint_dir: str, dataset_cfg: Dict[str, Any], splits, device: torch.device):
    """``load_surrogate(spec) -> (model, label, checkpoint path)`` for :class:`~robench.attacks.base.AttackContext`:
    a registered architecture (``spec['model']``, its config's default ``params`` when null) with the
    weights of ``spec['defense']`` at its conventional path under ``checkpoint_dir``, or ``spec['checkpoint']``."""
    def load(spec: Dict[str, Any]) -> Tuple[torch.nn.Module, str, str]:
        from robench.models.checkpoint import model_tag
        from robench.registry import config_dirs

        params = spec.get("params")
        if params is None:  # the model's config defaults, as `model=<name>` would compose them
            for d in config_dirs():
                f = Path(d) / "model" / f"{spec['model']}.yaml"
                if f.exists():
                    params = OmegaConf.to_container(OmegaConf.load(f)).get("params") or {}
                    break
        mcfg = {"name": spec["model"], "params": dict(params or {})}
        defense = spec.get("defense") or "none"
        model, meta = model_from_checkpoint(checkpoint_dir, dataset_cfg, mcfg, defense, splits,
                                            path=Path(spec["checkpoint"]) if spec.get("checkpoint") else None)
        return model.to(device).eval(), f"{model_tag(mcfg)}/{defense}", meta["path"]
    return load


def gradient_free(obj) -> Optional[str]:
    """Why ``obj`` (a victim module, or a registered model factory) has no input gradients, or None: a
    module (or factory) says so with a ``gradient_free`` reason, e.g. ``model=gbdt`` (robench/models/gbdt.py)."""
    mods = obj.modules() if isinstance(obj, torch.nn.Module) else [obj]
    return next((str(r) for r in (getattr(m, "gradient_free", None) for m in mods) if r), None)


def gradient_refusal(obj, access: str, attack: str = "") -> Optional[str]:
    """The rule, decided here only: an attack with ``gradient`` access cannot run on a victim (or registered
    factory) without input gradients. Returns why, or None when it can run."""
    reason = gradient_free(obj)
    if reason and str(access) == "gradient":
        what = f"attack={attack}" if attack else "a gradient attack"
        return (f"{reason}: {what} needs input gradients (white-box access); use a score- or label-based "
                f"attack instead (e.g. attack=opt, attack=signopt, attack=hsja, attack=square)")
    return None


def refuse_gradients(obj, access: str, attack: str = "") -> None:
    """:func:`gradient_refusal` as a one-line error, before any work."""
    msg = gradient_refusal(obj, access, attack)
    if msg:
        raise RobenchError(msg)


def check_inputs(x: torch.Tensor, what: str = "inputs", domain: Domain = IMAGE, hint: str = "") -> None:
    """Refuse inputs that are not finite floating-point values inside the domain's box (one line):
    robench's threat models and the oracle's box live there (images: [0, 1]; audio: [-1, 1])."""
    lo, hi = domain.box
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise InputError(f"{what} must be a floating-point tensor of {domain.describe()}, got "
                         f"{type(x).__name__ if not torch.is_tensor(x) else x.dtype}")
    if not x.numel():
        return
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        n = int(bad.flatten(1).any(1).sum()) if x.dim() > 1 else int(bad.sum())
        raise InputError(f"{what} holds NaN or infinite values ({n} of {len(x)} inputs): inputs must be finite "
                         f"{domain.describe()}")
    if float(x.min()) < lo or float(x.max()) > hi:
        raise InputError(f"{what} must lie in [{lo:g}, {hi:g}] (found values in [{float(x.min()):.4g}, "
                         f"{float(x.max()):.4g}]){hint or '; pass unnormalized inputs and give the model normalization as mean=/std='}")


def preflight(model: torch.nn.Module, x: torch.Tensor, *, repeats: int = 3, tol: float = 1e-5) -> Dict[str, Any]:
    """Checks before an attack (AutoAttack checks.py [croce2020]): returns {randomized, probabilities}.

    * ``randomized``: two or more forward passes of the same (first 8) inputs disagree by more than
      ``tol`` -- measured, not read from a defense's flag;
    * ``probabilities``: every output row is non-negative and sums to 1 (within 1e-4): the model likely
      ends in a softmax, which hides the logits from gradient attacks and weakens them: a warning.
    The inputs were checked where they entered (:func:`check_inputs`, called by prepare_run). The
    forward passes are the engine's, not queries of any attack.
    """
    from robench.training.loop import _device

    xs = x[:8].to(_device(model))  # the slice stays on the CPU; the victim may be on a GPU
    with torch.no_grad():
        outs = [model(xs).float() for _ in range(max(2, int(repeats)))]
    randomized = any(not torch.allclose(outs[0], o, atol=tol, rtol=0) for o in outs[1:])
    o = outs[0]
    probabilities = bool(o.numel() and (o >= 0).all() and torch.allclose(o.sum(1), torch.ones(len(o), device=o.device), atol=1e-4))
    if probabilities:
        msg = ("the model's outputs look like probabilities (non-negative rows summing to 1), not logits: "
               "gradient attacks on a softmax output are weaker; pass the model without its final softmax")
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    return {"randomized": randomized, "probabilities": probabilities}
