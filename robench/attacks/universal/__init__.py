"""Attacks that compute one perturbation for many samples (universal perturbations, patches): one file
each, registered by name; the protocol that builds and evaluates them is robench/evaluation/protocols.py (Shared)."""
from robench.attacks.universal import patch, uap  # noqa: F401  (registration)
