"""robench's Hydra config groups (installed as the package ``robench.configs``)."""
