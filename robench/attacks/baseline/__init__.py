"""Baselines that are not optimisation attacks (random perturbations)."""
