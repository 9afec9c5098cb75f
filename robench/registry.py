"""One small registry type for every kind of plugin (DESIGN.md, "The pieces").

Plugins register by decorator::

    from robench.registry import ATTACKS

    @ATTACKS.register("my_attack")
    class MyAttack(Attack):
        '''One-line description shown by `robench list`.'''

Third-party packages add plugins through the entry-point group ``robench.plugins``: each entry point
names a module (or a callable); loading it runs its ``@register`` decorators. Entry points are loaded
lazily, the first time any registry is asked for a name it does not hold or for its full listing. A
plugin package that has a ``configs/`` folder (e.g. ``configs/attack/my_attack.yaml``) gets it added to
Hydra's search path, so ``attack=my_attack`` works like a built-in.
"""
from __future__ import annotations

import importlib
import inspect
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from robench.errors import RobenchError

ENTRY_POINT_GROUP = "robench.plugins"


class Registry:
    """A named mapping from plugin names to factories (classes or functions)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, Any] = {}

    def register(self, name: str, obj: Any = None) -> Callable:
        """Register ``obj`` under ``name``; usable as ``@REG.register("name")``."""

        def deco(o: Any) -> Any:
            if name in self._items and self._items[name] is not o:
                raise RobenchError(f"{self.kind} '{name}' is registered twice "
                                   f"({_where(self._items[name])} and {_where(o)})")
            self._items[name] = o
            return o

        return deco(obj) if obj is not None else deco

    def get(self, name: str) -> Any:
        if name not in self._items:
            load_plugins()
        if name not in self._items:
            raise RobenchError(f"unknown {self.kind} '{name}'; valid: {', '.join(self.names()) or '(none)'}"
                               f" (see `robench list`)")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        if name not in self._items:
            load_plugins()
        return name in self._items

    def names(self) -> List[str]:
        load_plugins()
        return sorted(self._items)

    def items(self) -> Iterator[Tuple[str, Any]]:
        for n in self.names():
            yield n, self._items[n]

    def describe(self, name: str) -> str:
        """First line of the plugin's docstring: the one-line description `robench list` prints."""
        doc = inspect.getdoc(self.get(name)) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


def _where(o: Any) -> str:
    return f"{getattr(o, '__module__', '?')}.{getattr(o, '__qualname__', repr(o))}"


DATASETS = Registry("dataset")
MODELS = Registry("model")
ATTACKS = Registry("attack")
DEFENSES = Registry("defense")
REGISTRIES = {"datasets": DATASETS, "models": MODELS, "attacks": ATTACKS, "defenses": DEFENSES}

_loaded = False
#: (module name, config folder) of entry-point plugins that ship Hydra configs in a ``configs/`` folder
PLUGIN_CONFIG_DIRS: List[Tuple[str, "Path"]] = []


def load_builtins() -> None:
    """Import robench's own plugin modules (their decorators fill the registries)."""
    import robench.attacks  # noqa: F401
    import robench.data  # noqa: F401
    import robench.defenses  # noqa: F401
    import robench.models  # noqa: F401


def load_plugins() -> None:
    """Load built-ins, then every entry point of the group ``robench.plugins`` (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    load_builtins()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # a broken third-party plugin must not take robench down
            raise RobenchError(f"plugin entry point '{ep.name}' ({ep.value}) failed to load: {e}") from e
        if callable(obj) and not inspect.isclass(obj):
            obj()
        mod = ep.value.split(":")[0]
        for p in getattr(importlib.import_module(mod), "__path__", None) or []:
            if (Path(p) / "configs").is_dir():
                PLUGIN_CONFIG_DIRS.append((mod, Path(p) / "configs"))


# ------------------------------------------------------------------------------- parameter schema
# Every registered attack, defense and model declares its parameters in its constructor's (or
# factory's) signature, with type annotations; numeric parameters also get a range, from the
# plugin's ``param_ranges`` class/function attribute or, for parameter names shared by many
# plugins, from DEFAULT_RANGES. ``validate_params`` checks a params mapping against that schema
# before anything is built: wrong names, wrong types (1.5 for an int, 'maybe' for a bool), NaN,
# infinities and out-of-range numbers all fail with one line naming the setting.

#: ranges for parameter names many plugins share; a plugin's ``param_ranges`` entry wins
DEFAULT_RANGES: Dict[str, str] = {
    "steps": ">=1", "restarts": ">=1", "step_size": ">0", "step_size_l2": ">0", "eps": ">=0", "eps_max": ">=0",
    "alpha": ">0", "beta": ">0", "sigma": ">0", "lr": ">0", "learning_rate": ">0", "decay": ">=0", "tol": ">0",
    "max_steps": ">=1", "max_iterations": ">=1", "max_iter": ">=1", "max_evals": ">=1", "init_evals": ">=1",
    "n_init": ">=1", "q": ">=1", "init_tol": ">0", "search_tol": ">0", "min_beta": ">0", "momentum": "[0,1)",
    "temperature": ">0", "resize": ">=1", "warmup_epochs": ">=0", "confidence": ">=0", "rho": "(0,1]",
    "batch_size": ">=1", "dropout": "[0,1)", "depth": ">=1", "width": ">=1", "bits": "[1,8]", "size": ">=1",
    "quality": "[1,100]", "iterations": ">=1", "kappa": ">=0", "fpr": "(0,1)", "calibration_samples": ">=1",
    "draws": ">=1", "draws_per_step": ">=1", "n_samples": ">=2", "gamma": ">0", "clean_weight": ">=0",
}

#: parameters the framework passes itself (a model's class count and input shape come from the dataset)
RESERVED_PARAMS = {"num_classes", "shape"}


class Range:
    """A numeric interval parsed from ``">0"``, ``">=1"``, ``"<=1"``, ``"[0,1]"``, ``"(0,1]"`` ..."""

    def __init__(self, spec: str):
        s = spec.replace(" ", "")
        self.spec, self.lo, self.hi, self.lo_open, self.hi_open = spec, None, None, False, False
        if s[:2] in (">=", "<="):
            (self.__setattr__("lo", float(s[2:])) if s[0] == ">" else self.__setattr__("hi", float(s[2:])))
        elif s[0] in "<>":
            if s[0] == ">":
                self.lo, self.lo_open = float(s[1:]), True
            else:
                self.hi, self.hi_open = float(s[1:]), True
        elif s[0] in "[(" and s[-1] in "])" and "," in s:
            lo, hi = s[1:-1].split(",")
            self.lo, self.hi, self.lo_open, self.hi_open = float(lo), float(hi), s[0] == "(", s[-1] == ")"
        else:
            raise ValueError(f"bad range spec {spec!r}")

    def __contains__(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True

    def describe(self) -> str:
        f = lambda x: str(int(x)) if float(x).is_integer() else str(x)
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{f(self.lo)}, {f(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {f(self.lo)}"
        return f"{'<' if self.hi_open else '<='} {f(self.hi)}"


def _type_hints(obj: Any) -> Dict[str, Any]:
    import typing

    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return typing.get_type_hints(fn)
    except Exception:  # an annotation that does not evaluate: the registry test reports it
        return {}


def param_schema(obj: Any) -> Dict[str, Tuple[Any, Optional[Range], Any]]:
    """{parameter: (type annotation or None, range or None, default)} of a plugin's constructor."""
    hints = _type_hints(obj)
    ranges = {**DEFAULT_RANGES, **(getattr(obj, "param_ranges", None) or {})}
    out = {}
    for n, p in inspect.signature(obj).parameters.items():
        if n in ("self", "args", "kwargs") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[n] = (hints.get(n), Range(ranges[n]) if n in ranges else None, p.default)
    return out


def _arms(tp: Any) -> Tuple[Any, List[Any]]:
    """(origin, args) of a typing construct, with ``X | None`` read like ``Optional[X]``."""
    import typing

    return typing.get_origin(tp), list(typing.get_args(tp))


def understood(tp: Any) -> bool:
    """Whether :func:`check_value` knows how to check values of annotation ``tp``."""
    import collections.abc as abc
    import types
    import typing

    if tp in (int, float, bool, str, type(None), Any):
        return True
    origin, args = _arms(tp)
    if origin in (typing.Union, types.UnionType):
        return all(understood(a) for a in args)
    if origin is typing.Literal:
        return True
    if origin in (list, tuple, abc.Sequence, dict, abc.Mapping):
        return all(understood(a) for a in args if a is not Ellipsis)
    return False


def _type_word(tp: Any) -> str:
    import types
    import typing

    words = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string",
             type(None): "null", Any: "any value"}
    if tp in words:
        return words[tp]
    origin, args = _arms(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_word(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (dict,) or getattr(origin, "__name__", "") == "Mapping":
        return "a mapping"
    return "a list"


def check_value(v: Any, tp: Any, rng: Optional[Range] = None) -> Optional[str]:
    """None when ``v`` fits annotation ``tp`` (and ``rng``, for numbers); else what it must be."""
    import collections.abc as abc
    import math
    import types
    import typing

    if tp is None or tp is Any:
        return None
    origin, args = _arms(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        errs = [check_value(v, a, rng) for a in args if a is not type(None)]
        if any(e is None for e in errs):
            return None
        if len(errs) == 1:
            return errs[0] + (" or null" if type(None) in args else "")
        return _type_word(tp)
    if origin is typing.Literal:
        return None if v in args else "one of " + ", ".join(map(str, args))
    if tp is bool:
        return None if isinstance(v, bool) else "true or false"
    if tp is str:
        return None if isinstance(v, str) else "a string"
    if tp is type(None):
        return None if v is None else "null"
    if tp in (int, float):
        num = isinstance(v, int) if tp is int else isinstance(v, (int, float))
        if isinstance(v, bool) or not num:
            return "an integer" + (f" {rng.describe()}" if rng else "") if tp is int else \
                "a finite number" + (f" {rng.describe()}" if rng else "")
        word = "an integer" if tp is int else "a finite number"
        if not math.isfinite(v) or abs(v) > 2 ** 62:
            return word + (f" {rng.describe()}" if rng else "")
        if rng is not None and v not in rng:
            return f"{word} {rng.describe()}"
        return None
    if origin in (list, tuple, abc.Sequence):
        if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)):
            return "a list"
        inner = args[0] if args and args[-1] is not Ellipsis or len(args) == 2 else None
        if inner is not None and len(args) <= 2:
            for x in v:
                e = check_value(x, inner)
                if e:
                    return f"a list whose items are {e}"
        return None
    if origin in (dict, abc.Mapping):
        return None if isinstance(v, dict) else "a mapping"
    return None  # an annotation the validator does not know: the registry test keeps there being none


def validate_params(registry: "Registry", name: str, params: Dict[str, Any] | None, what: str,
                    prefix: Optional[str] = None) -> Dict[str, Any]:
    """Check ``params`` against plugin ``name``'s declared schema (names, types, finite numbers in
    range); returns them as a plain dict. Every failure is one line naming ``prefix.<param>``."""
    obj = registry.get(name)
    prefix = prefix or f"{what}.params"
    if params is not None and not isinstance(params, dict):
        raise RobenchError(f"{prefix} must be a mapping of {what} '{name}''s parameters, got '{params}'")
    params = dict(params or {})
    schema = param_schema(obj)
    reserved = [k for k in params if k in RESERVED_PARAMS and k in schema]
    if reserved:
        raise RobenchError(f"{prefix}.{reserved[0]} is set by the dataset, not by {what} '{name}''s parameters")
    unknown = [k for k in params if k not in schema]
    if unknown:
        valid = [k for k in schema if k not in RESERVED_PARAMS]
        raise RobenchError(f"{what} '{name}' has no parameter(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    for k, v in params.items():
        tp, rng, _ = schema[k]
        err = check_value(v, tp, rng)
        if err:
            raise RobenchError(f"{prefix}.{k} must be {err}, got '{v}'")
    return params


def instantiate(registry, name: str, params: Dict[str, Any] | None, what: str, prefix: Optional[str] = None):
    """``registry[name](**params)`` after :func:`validate_params` (one line for any bad value)."""
    cls = registry.get(name)
    return cls(**validate_params(registry, name, params, what, prefix))


# ------------------------------------------------------------------------------- config folders
def configs_dir() -> Path:
    """The config folder shipped inside the package (``robench/configs``, mapped from ``configs/``)."""
    import robench.configs as c

    return Path(c.__file__).parent


def config_dirs() -> List[Path]:
    """robench's own config folder, then those of entry-point plugins that ship one."""
    load_plugins()
    return [configs_dir()] + [d for _, d in PLUGIN_CONFIG_DIRS]


def attack_batch_size(name: str) -> int:
    """``batch_size`` of ``configs/attack/<name>.yaml`` (what ``robench attack attack=<name>`` uses), else 1000."""
    import yaml

    for d in config_dirs():
        f = d / "attack" / f"{name}.yaml"
        if f.exists():
            try:
                bs = (yaml.safe_load(f.read_text()) or {}).get("batch_size", 1000)
            except yaml.YAMLError:
                return 1000
            return bs if isinstance(bs, int) and not isinstance(bs, bool) and bs >= 1 else 1000
    return 1000
