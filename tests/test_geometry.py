"""robench.geometry (the Lp operations of the threat model) and the attacks' active-set helper."""
import pytest
import torch
from torch import nn

from robench.attacks.base import keep_active
from robench.geometry import GEOMETRIES, bview, distortion, geometry
from robench.referee.oracle import Oracle
from robench.geometry import distortion as oracle_distortion

NORMS = ("linf", "l2")
ORD = {"linf": float("inf"), "l2": 2}


def batch(seed=0, shape=(16, 3, 5, 7), scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


@pytest.mark.parametrize("norm", NORMS)
def test_distance_matches_torch_linalg(norm):
    d = batch(scale=0.3)
    ref = torch.linalg.vector_norm(d.flatten(1), ord=ORD[norm], dim=1)
    assert torch.allclose(geometry(norm).distance(d), ref, rtol=1e-6, atol=0)
    assert torch.equal(distortion(d, norm), geometry(norm).distance(d))


def test_l0_and_the_oracle_reexport():
    d = torch.zeros(3, 1, 2, 2)
    d[0, 0, 0, 0] = 0.5
    d[1] = 1e-7  # below the threshold: not a change
    d[2, 0, :, 0] = -0.2
    assert distortion(d, "l0").tolist() == [1.0, 0.0, 2.0]
    assert oracle_distortion is distortion
    with pytest.raises(ValueError):
        distortion(d, "l3")
    with pytest.raises(ValueError):
        geometry("l1")


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("eps", [0.05, 0.5, 3.0])
def test_projection_inside_ball_and_idempotent(norm, eps):
    geo = geometry(norm)
    d = batch(scale=0.4)
    p = geo.project(d, eps)
    assert (geo.distance(p) <= eps * (1 + 1e-6)).all()
    assert torch.allclose(geo.project(p, eps), p, atol=1e-7)
    inside = geo.distance(d) <= eps  # rows already inside are unchanged
    assert torch.equal(p[inside], d[inside])
    # the projection is the nearest point of the ball: no random point of the ball is closer
    for s in range(5):
        q = geo.project(batch(seed=100 + s, scale=0.4), eps)
        assert (geo.distance(d - p) <= geo.distance(d - q) + 1e-5).all()


@pytest.mark.parametrize("norm", NORMS)
def test_clip_lands_in_ball_and_box(norm):
    geo = geometry(norm)
    x0 = torch.rand(16, 3, 5, 7, generator=torch.Generator().manual_seed(1))
    d = batch(scale=0.5)
    for eps in (0.1, 1.0):
        x = geo.clip(x0, d, eps)
        assert x.min() >= 0 and x.max() <= 1
        assert (geo.distance(x - x0) <= eps * (1 + 1e-6)).all()
        assert torch.equal(geo.project_point(x0 + d, x0, eps), geo.clip(x0, (x0 + d) - x0, eps))
        assert torch.allclose(geo.clip(x0, x - x0, eps), x, atol=1e-7)  # idempotent
    if norm == "linf":  # exact projection onto the intersection: the per-coordinate clamp
        lo, hi = torch.maximum(x0 - 0.1, torch.zeros_like(x0)), torch.minimum(x0 + 0.1, torch.ones_like(x0))
        assert torch.allclose(geo.clip(x0, d, 0.1), torch.minimum(torch.maximum(x0 + d, lo), hi), atol=1e-7)


@pytest.mark.parametrize("norm", NORMS)
def test_per_row_eps_tensor(norm):
    geo = geometry(norm)
    d = batch(scale=0.5)
    eps = torch.linspace(0.01, 2.0, d.shape[0])
    p = geo.project(d, bview(eps, d.dim()))
    assert (geo.distance(p) <= eps * (1 + 1e-6)).all()
    for i in (0, 7, 15):  # row i equals the projection with the scalar eps_i
        assert torch.allclose(p[i:i + 1], geo.project(d[i:i + 1], float(eps[i])), atol=1e-7)
    x0 = torch.rand(d.shape, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    xs = geo.random_start(x0, bview(eps, d.dim()))
    assert xs.min() >= 0 and xs.max() <= 1 and (geo.distance(xs - x0) <= eps * (1 + 1e-6)).all()


@pytest.mark.parametrize("norm", NORMS)
def test_normalize_and_step(norm):
    geo = geometry(norm)
    v = batch()
    v[3] = 0  # a zero row stays zero, no NaN
    u = geo.normalize(v)
    n = geo.distance(u)
    assert torch.allclose(n[torch.arange(len(n)) != 3], torch.ones(len(n) - 1), atol=1e-6)
    assert torch.equal(u[3], torch.zeros_like(u[3]))
    s = geo.step(v, 0.25)
    assert torch.allclose(geo.distance(s)[torch.arange(len(n)) != 3], torch.full((len(n) - 1,), 0.25), atol=1e-6)
    assert not torch.isnan(s).any()
    # the step ascends: <g, step> is maximal over the ball of radius alpha (= alpha * dual norm of g)
    dual = v.flatten(1).abs().sum(1) if norm == "linf" else v.flatten(1).norm(dim=1)
    assert torch.allclose((v * s).flatten(1).sum(1), 0.25 * dual, rtol=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_random_start_inside_ball_and_box_and_seeded(norm):
    geo = geometry(norm)
    x0 = torch.rand(64, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    eps = 0.3 if norm == "linf" else 1.5
    a = geo.random_start(x0, eps, torch.Generator().manual_seed(7))
    b = geo.random_start(x0, eps, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert (geo.distance(a - x0) <= eps * (1 + 1e-6)).all()
    d = geo.random_in_ball((4000, 2), eps, torch.Generator().manual_seed(5), "cpu")
    r = geo.distance(d)
    assert (r <= eps * (1 + 1e-6)).all()
    # uniform in the ball (2-D): the fraction within radius eps/2 is 1/4, and it is not on the sphere
    assert abs((r <= eps / 2).float().mean().item() - 0.25) < 0.04


def test_registry_of_geometries():
    assert set(GEOMETRIES) == {"linf", "l2", "l0"}
    for name, g in GEOMETRIES.items():
        assert g.name == name and geometry(name) is g


# ---------------------------------------------------------------------- the active-set helper
class Fixed(nn.Module):
    """Predicts class 1 when the first pixel is > 0.5, else class 0."""

    def forward(self, x):
        z = (x.flatten(1)[:, :1] > 0.5).float()
        return torch.cat([1 - z, z], 1) * 10


def test_keep_active_drops_done_and_masked_rows():
    x0 = torch.zeros(4, 1, 2, 2)
    y = torch.zeros(4, dtype=torch.long)
    o = Oracle(Fixed(), x0, y, access="scores", norm="linf", eps=1.0, max_queries=5, num_classes=2)
    idx = torch.arange(4)
    x, extra = x0.clone(), {"a": torch.arange(4.0)}
    same = keep_active(o, idx, x, extra, None)
    assert same[0] is idx and same[1] is x and same[2] is extra and same[3] is None  # nothing to drop: no copy
    # sample 1 succeeds (pixel 1.0 -> class 1); sample 3 is answered but masked by the attack
    q = x0.clone()
    q[1] = 1.0
    o.scores(q, idx)
    mask = torch.tensor([True, True, True, False])
    i2, x2, e2, n2 = keep_active(o, idx, x, extra, None, mask=mask)
    assert i2.tolist() == [0, 2] and torch.equal(x2, x[[0, 2]]) and e2["a"].tolist() == [0.0, 2.0] and n2 is None
    # out of budget: sample 0 spends its remaining 4 queries, then it is dropped too
    o.scores(x0[[0, 0, 0, 0]], torch.tensor([0, 0, 0, 0]))
    i3, x3 = keep_active(o, i2, x2)
    assert i3.tolist() == [2] and torch.equal(x3, x2[1:])
    # nothing left: empty tensors, the caller stops
    o.scores(x0[[2, 2, 2, 2]], torch.tensor([2, 2, 2, 2]))
    i4, x4 = keep_active(o, i3, x3)
    assert len(i4) == 0 and x4.shape == (0, 1, 2, 2)


# ---------------------------------------------------------------------- family bases
def score_attacks():
    from robench.attacks.score._common import ScoreAttack
    from robench.registry import ATTACKS

    names = [n for n in ATTACKS.names() if isinstance(ATTACKS.get(n), type) and issubclass(ATTACKS.get(n), ScoreAttack)]
    return [(n, ATTACKS.get(n)) for n in names]


def test_every_score_attack_runs_the_shared_preamble():
    from robench.errors import RobenchError

    found = score_attacks()
    assert {"square", "genattack", "nes", "zoo", "noise"} <= {n for n, _ in found}
    x0 = torch.rand(3, 1, 4, 4)
    for name, cls in found:
        assert cls.name == name and cls.access == "scores"
        # no eps: refused before the run starts (the declared eps_policy), naming the attack
        from robench.evaluation.spec import AttackTraits, Budget

        assert cls.eps_policy == "finite"
        with pytest.raises(RobenchError, match=f"attack={name} is an eps-bounded attack"):
            AttackTraits.of(cls(), name).check_budget(Budget(norm=cls.norms[0], eps=None), name)
        # nothing active: the preamble returns before any query or random draw
        norm = "linf" if "linf" in cls.norms else cls.norms[0]  # one_pixel, sparse_rs: L0 only
        o = Oracle(Fixed(), x0, torch.zeros(3, dtype=torch.long), access="scores", norm=norm,
                   eps=2 if norm == "l0" else 0.1, max_queries=0, num_classes=2)
        g = torch.Generator().manual_seed(0)
        cls().run(o, g)
        assert int(o.queries.sum()) == 0 and torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())


def test_opt_and_signopt_share_the_direction_search_skeleton():
    from robench.attacks.decision.common import DirectionSearchAttack
    from robench.attacks.decision.opt import OPTAttack
    from robench.attacks.decision.signopt import SignOPT

    for cls in (OPTAttack, SignOPT):
        assert issubclass(cls, DirectionSearchAttack) and "run" not in cls.__dict__
        assert "_estimate" in cls.__dict__
