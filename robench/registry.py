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
