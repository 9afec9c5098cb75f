from __future__ import annotations

import torch

from robench.attacks.decision.signopt import SignOPT
from robench.registry import ATTACKS


@ATTACKS.register("zo_signsgd")
class ZOSignSGD(SignOPT):
    """ZO-SignSGD (Liu et al. [liu2019signsgd]) on the hard-label objective with Sign-OPT's single-query
    oracle: the ablation of [cheng2021 §2.5.0.3] (Fig 2.7b, "ZO-SignSGD using the SQO").

    The same Q sign queries as Sign-OPT (eq. 2.17: one label query per random unit direction u_q at the
    current boundary distance), aggregated as ZO-SignSGD does: the step direction is the coordinate-wise
    sign of the averaged estimate, sign((1/Q) sum_q sign_q u_q), instead of the estimate itself. This is
    the difference §2.4.3 names: ZO-SignSGD's step "ignores the direction of u_q" (every coordinate
    moves by the same amount), while Sign-OPT keeps the magnitudes.

    Everything else is Sign-OPT's, deliberately, so the ablation changes one thing: Q = 200, beta = 0.001,
    100 initial directions, and the OPT reference code's line search and stall rule in place of
    ZO-SignSGD's fixed learning-rate schedule (the thesis does not say which step rule its ablation
    used). The sign vector is divided by sqrt(d) (unit L2 norm) so the line search's alpha measures the
    step length as for Sign-OPT's estimate; with the line search the scale changes no result except
    through alpha's starting value and the stall threshold. Variant (a) of §2.5.0.3 (the sign of
    OPT's binary-search gradient estimate) is not implemented: the thesis calls it "not efficient".
    """

    label = "zo_signsgd"

    def _aggregate(self, u: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """sign((1/Q) sum_q sign_q u_q) / sqrt(d)."""
        est = super()._aggregate(u, sign)
        return est.sign() / est[0].numel() ** 0.5
