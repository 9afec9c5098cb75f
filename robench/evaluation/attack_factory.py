"""How a run builds its attack object: from the registry, from a code reference (``attack=external``), or,
under ``isolate``, in a sandboxed child process that the parent only talks to (robench/referee/isolation).

The parent builds nothing from an isolated attack's code: it knows the attack by name (or code
reference) and validated parameters, and gets the attack's declared traits back from the child.
"""
from __future__ import annotations

from typing import Any, Callable

from robench.evaluation.spec import RunSpec, thaw


def attack_factory(spec: RunSpec, context: Any) -> Callable[[], Any]:
    """A function returning a fresh attack for ``spec``, prepared with ``context`` (its declared needs)."""
    from robench.evaluation.engine import prepare_attack

    params = thaw(spec.attack.params)
    if spec.isolate:
        from robench.referee.isolation import IsolatedAttack

        return lambda: IsolatedAttack.start(spec.attack, context)
    if spec.attack.code is not None:
        from robench.models.weights import import_code

        cls = import_code(spec.attack.code, "attack.code", kind="attack")

        def build():
            try:
                a = cls(**params)
            except TypeError as e:
                from robench.errors import RobenchError

                raise RobenchError(f"attack.code={spec.attack.code}: {e}") from None
            prepare_attack(a, context)
            return a
        return build

    from robench.registry import ATTACKS, instantiate

    def build():
        a = instantiate(ATTACKS, spec.attack.name, params, "attack")
        prepare_attack(a, context)
        return a
    return build
