"""Attacks: one file each, registered by name (DESIGN.md, "Attacks")."""
from robench.attacks.base import Attack, attack_loss  # noqa: F401
from robench.attacks.whitebox import pgd  # noqa: F401  (registration)
from robench.attacks import score  # noqa: F401  (registration: genattack, zoo, nes, square, noise)
from robench.attacks import decision  # noqa: F401  (registration)
from robench.attacks.whitebox import apgd, apgd_dlr, apgd_t, bim, cw, cw_linf, deepfool, fab, fgsm, fmn, ilcm, jsma, lbfgs, mifgsm  # noqa: F401,E501
from robench.attacks.baseline import gaussian_noise  # noqa: F401
from robench.attacks.composite import autoattack, ensemble, substitute, transfer  # noqa: F401
from robench.attacks import universal  # noqa: F401  (registration: uap, patch)
