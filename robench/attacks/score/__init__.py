"""Score-based black-box attacks (access level ``scores``): one file each, registered by name."""
from robench.attacks.score import genattack, nes, noise, one_pixel, sparse_rs, square, zoo  # noqa: F401  (registration)
