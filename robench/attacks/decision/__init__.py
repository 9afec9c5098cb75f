"""Hard-label (decision-based) attacks: the attacker sees only the victim's top-1 label."""
from robench.attacks.decision import signopt  # noqa: F401  (registration)
from robench.attacks.decision import opt  # noqa: F401
from robench.attacks.decision import hsja  # noqa: F401
from robench.attacks.decision import boundary, rays  # noqa: F401
from robench.attacks.decision import guessing_smart, svmopt, zo_signsgd  # noqa: F401
