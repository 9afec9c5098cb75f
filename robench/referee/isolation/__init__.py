"""``isolate=true``: the attack in a bubblewrap sandbox, talking to the referee through a typed wire format
(robench/referee/isolation/sandbox.py says what crosses the boundary and how)."""
from robench.referee.isolation.sandbox import IsolatedAttack

__all__ = ["IsolatedAttack"]
