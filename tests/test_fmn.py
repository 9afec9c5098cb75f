"""FMN (Pintor et al. 2021) on the trained tiny victim: minimal, certified, counted."""
import pytest
import torch

from robench.attacks.whitebox.deepfool import DeepFool
from robench.attacks.whitebox.fmn import FMN
from robench.errors import RobenchError
from tests.test_minimal_perturbation import _run
from tests.test_oracle import CountingModel
from tests.test_pgd import check_certified


def _dist(r, x0, norm):
    d = (r.best_x - x0).flatten(1)
    return (d.norm(dim=1) if norm == "l2" else d.abs().amax(1))[r.success]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fmn_beats_deepfool_and_is_counted(victim, test_xy, norm):
    x0, y = test_xy[0][:20], test_xy[1][:20]
    counter = CountingModel(victim, x0)
    r = _run(FMN(steps=100), counter, x0, y, norm=norm)
    assert r.success.all()
    check_certified(victim, x0, y, r, norm, float("inf"))
    assert (r.queries <= 100).all() and counter.rows == int(r.queries.sum())
    assert torch.equal(r.grad_queries, r.queries)  # every query is one step's gradient
    r_df = _run(DeepFool(), victim, x0, y, norm=norm)
    assert r_df.success.all()
    ours, df = _dist(r, x0, norm), _dist(r_df, x0, norm)
    # a minimum-norm optimisation: smaller than DeepFool's linearisation, on the median and on most samples
    # (100 steps, measured: Linf median 0.151 vs DeepFool 0.166; L2 1.77 vs 1.94 and 1.6 vs 1.9 on two trainings
    # of the tiny victim: a margin that holds across machines, whose weights differ in the last bits)
    assert ours.median() < 0.95 * df.median()
    assert (ours <= df + 1e-6).float().mean() >= 0.8


def test_fmn_targeted_and_budget(victim, test_xy):
    x0, y = test_xy[0][:10], test_xy[1][:10]
    t = (y + 3) % 10
    r = _run(FMN(steps=100), victim, x0, y, targets=t)
    assert r.success.float().mean() >= 0.9
    check_certified(victim, x0, y, r, "l2", float("inf"), targets=t)
    r = _run(FMN(steps=100), victim, x0, y, max_queries=30)  # the budget, not the step count, ends it
    assert (r.queries <= 30).all() and (r.queries == 30).any()


def test_fmn_bad_parameters():
    with pytest.raises(RobenchError, match="steps"):
        FMN(steps=0)
    with pytest.raises(RobenchError, match="gamma"):
        FMN(gamma_init=0.01, gamma_final=0.1)
