"""Facts about the Hydra job robench runs in (none outside a Hydra app)."""
from __future__ import annotations


def in_multirun() -> bool:
    """Whether this job is one of a ``-m`` sweep."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # outside a Hydra app (tests calling the jobs directly)
        return False
