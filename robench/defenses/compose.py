"""Composing defenses: a training recipe (the checkpoint) behind any input transformations, plus an
optional detector.

Config shape (the ``defense`` group; DESIGN.md, "Defenses"). A training recipe's option file sets
``name`` (and ``params``) at the group's root, as before; an input transformation's option file places
itself under ``defense.input.<name>`` (``# @package defense.input.jpeg``) and a detector's under
``defense.detector``. Selecting several options of the group, ``defense=[pgd_at,jpeg]``, therefore
merges them without collisions:

    defense=none              {name: none}                                  natural checkpoint
    defense=jpeg              {input: {jpeg: {quality: 75}}}                natural checkpoint behind JPEG
    defense=[pgd_at,jpeg]     {name: pgd_at, params: ..., input: {jpeg: ...}}
    defense=[none,bit_depth,jpeg]   transforms applied in the order listed (bit depth, then JPEG)
    defense=[none,feature_squeeze_detect]   {name: none, detector: {name: ..., params: ...}}

A missing ``name`` means natural training (``none``). The checkpoint path is that of the recipe
alone, so ``defense=[pgd_at,jpeg]`` attacks ``checkpoints/<dataset>/<model>/pgd_at.pt`` behind JPEG.
``defense.name=<input transform>`` (with ``defense.params``) is accepted too and means the natural
checkpoint behind that one transform.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from robench.defenses.base import InputDefense, TrainingRecipe
from robench.errors import RobenchError
from robench.registry import DEFENSES


def _plain(node: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(node):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return node


def _kind(name: str) -> str:
    obj = DEFENSES.get(name)
    if inspect.isclass(obj) and issubclass(obj, InputDefense):
        return "input"
    if inspect.isclass(obj) and issubclass(obj, TrainingRecipe):
        return "train"
    return getattr(obj, "kind", "train")


def _names(kind: str) -> str:
    return ", ".join(n for n in DEFENSES.names() if _kind(n) == kind) or "(none)"


@dataclass
class DefenseSpec:
    recipe: str = "none"
    recipe_params: Dict[str, Any] = field(default_factory=dict)
    inputs: List[Tuple[str, Dict[str, Any]]] = field(default_factory=list)
    detector: Optional[Tuple[str, Dict[str, Any]]] = None

    @property
    def label(self) -> str:
        """``pgd_at+jpeg``, ``jpeg`` (natural checkpoint behind JPEG), ``none``; a detector adds ``+<name>``."""
        parts = [n for n, _ in self.inputs] + ([self.detector[0]] if self.detector else [])
        if self.recipe != "none" or not parts:
            parts.insert(0, self.recipe)
        return "+".join(parts)


def defense_spec(dcfg: Any) -> DefenseSpec:
    """Parse and validate the ``defense`` node (unknown names and wrong kinds fail with one line)."""
    d = _plain(dcfg) or {}
    if not isinstance(d, dict):
        raise RobenchError(f"defense must be a config node (e.g. defense=none or defense=[none,jpeg]), got '{d}'")
    spec = DefenseSpec()
    name = d.get("name", "none") or "none"
    params = dict(d.get("params") or {})
    kind = _kind(name)
    if kind == "input":
        spec.inputs.append((name, params))
    elif kind == "train":
        spec.recipe, spec.recipe_params = name, params
    else:
        raise RobenchError(f"defense '{name}' is a {kind}; select it with defense=[none,{name}]")
    for iname, ip in (d.get("input") or {}).items():
        if _kind(iname) != "input":
            raise RobenchError(f"defense.input.{iname}: '{iname}' is not an input transformation; valid: {_names('input')}")
        spec.inputs.append((iname, dict(ip or {})))
    det = d.get("detector")
    if det:
        dname = det.get("name")
        if dname is None or _kind(dname) != "detector":
            raise RobenchError(f"defense.detector.name must name a detector, got '{dname}'; valid: {_names('detector')}")
        spec.detector = (dname, dict(det.get("params") or {}))
    return spec


def defense_label(dcfg: Any) -> str:
    """The Hydra resolver ``${robench_defense:${defense}}`` (run folder names): see :attr:`DefenseSpec.label`."""
    try:
        return defense_spec(dcfg).label
    except RobenchError:
        d = _plain(dcfg) or {}
        return str(d.get("name", "defense")) if isinstance(d, dict) else "defense"


def _instantiate(name: str, params: Dict[str, Any]):
    from robench.registry import instantiate

    return instantiate(DEFENSES, name, params, "defense")


def instantiate_input(name: str, params: Optional[Dict[str, Any]] = None) -> InputDefense:
    if _kind(name) != "input":
        raise RobenchError(f"'{name}' is not an input transformation; valid: {_names('input')}")
    return _instantiate(name, dict(params or {}))


def build_inputs(spec: DefenseSpec) -> List[InputDefense]:
    return [instantiate_input(n, p) for n, p in spec.inputs]


def build_detector(spec: DefenseSpec):
    return None if spec.detector is None else _instantiate(*spec.detector)


class DefendedModel(nn.Module):
    """The victim: input transformations (in order) in front of the model (DESIGN.md, "Defenses").

    ``model`` is the undefended classifier (e.g. the adversarially trained checkpoint); ``set_bpda``,
    ``is_randomized`` and ``reseed_defenses`` reach the transformations through ``modules()``.
    """

    def __init__(self, model: nn.Module, transforms: List[InputDefense]):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)
        self.model = model

    def forward(self, x):
        for t in self.transforms:
            x = t(x)
        return self.model(x)


def undefended(model: nn.Module) -> nn.Module:
    """The classifier without its input transformations: a :class:`DefendedModel`'s model, or a
    ``Sequential`` without the transformations a model surgery put inside it (MagNet's reformer)."""
    if isinstance(model, DefendedModel):
        return model.model
    if isinstance(model, nn.Sequential) and any(isinstance(m, InputDefense) for m in model.children()):
        return nn.Sequential(*[m for m in model.children() if not isinstance(m, InputDefense)])
    return model
