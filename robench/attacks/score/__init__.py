"""Score-based black-box attacks (access level ``scores``): one file each, registered by name."""
from robench.attacks.score import autozoom, fd_fgsm, genattack, genattack_audio, nes, noise, one_pixel, sparse_rs, square, zoo  # noqa: F401,E501  (registration)
