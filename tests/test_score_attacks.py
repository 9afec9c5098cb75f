"""Score-based attacks (GenAttack, ZOO, NES, Square) on the trained tiny victim: each beats the
random-noise baseline at the same budget; query counts are checked independently of the oracle."""
import pytest
import torch
from torch import nn

from robench.attacks.score.genattack import GenAttack, genattack_fitness
from robench.attacks.score.nes import NES
from robench.attacks.score.noise import RandomNoise
from robench.attacks.score.square import Square, p_selection
from robench.attacks.score.zoo import ZOO
from robench.errors import RobenchError
from robench.geometry import distortion
from robench.referee.oracle import Oracle


class CallLog(nn.Module):
    """Records the number of rows of every forward call and attributes each row to the nearest clean
    image (perturbations here are far smaller than the distance between two test images)."""

    def __init__(self, model, x0):
        super().__init__()
        self.model, self.x0 = model, x0.flatten(1)
        self.calls = []
        self.per_sample = torch.zeros(len(x0), dtype=torch.long)
        self.enabled = True  # off for the oracle's final (uncounted) re-check

    def forward(self, x):
        if not self.enabled:
            return self.model(x)
        self.calls.append(len(x))
        owner = torch.cdist(x.detach().flatten(1), self.x0).argmin(1)
        self.per_sample += torch.bincount(owner, minlength=len(self.x0))
        return self.model(x)


def run(attack, model, x, y, norm, eps, max_queries, targets=None, seed=0):
    o = Oracle(model, x, y, access="scores", norm=norm, eps=eps, max_queries=max_queries, targets=targets,
               num_classes=10)
    attack.run(o, torch.Generator().manual_seed(seed))
    if isinstance(model, CallLog):
        model.enabled = False
    return o.finalize()


def certified(model, x0, y, r, norm, eps, targets=None):
    """Independently of the oracle: every success is on target / misclassified, in the box and the ball."""
    s = r.success
    with torch.no_grad():
        pred = model(r.best_x[s]).argmax(1)
    assert (pred == targets[s]).all() if targets is not None else (pred != y[s]).all()
    assert r.best_x.min() >= 0 and r.best_x.max() <= 1
    assert (distortion(r.best_x[s] - x0[s], norm) <= eps + 1e-5).all()


def rate(r, budget=None):
    s = r.success if budget is None else r.success & (r.queries_at_success <= budget)
    return s.float().mean().item()


def targets_for(y, seed=1):
    return (y + torch.randint(1, 10, y.shape, generator=torch.Generator().manual_seed(seed))) % 10


N_CASE = 12          # images per "beats noise" case (the first originally-correct test images)
NOISE_BUDGET = 1500  # the shared baseline runs once per threat model at this budget
_noise = {}


def noise_rate(victim, test_xy, norm, eps, budget, targeted=False):
    """Success rate of the random-noise baseline within ``budget`` queries on the first N_CASE images.
    The baseline never adapts, so its successes within a smaller budget are those of a run with that
    budget: one run per threat model serves every test."""
    assert budget <= NOISE_BUDGET
    key = (norm, eps, targeted)
    if key not in _noise:
        x0, y = test_xy[0][:N_CASE], test_xy[1][:N_CASE]
        _noise[key] = run(RandomNoise(), victim, x0, y, norm, eps, NOISE_BUDGET, targets=targets_for(y) if targeted else None)
    return rate(_noise[key], budget)


def case(test_xy):
    return test_xy[0][:N_CASE], test_xy[1][:N_CASE]


# ---------------------------------------------------------------- GenAttack
def test_genattack_fitness_sign():
    p = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [1.0, 0.0, 0.0]])
    y = torch.tensor([0, 0, 0])
    t = torch.tensor([0, 0, 1])
    f = genattack_fitness(p, y, t)  # targeted: log-odds of the target
    assert f[0] == pytest.approx(torch.log(torch.tensor(0.6 / 0.4)).item(), rel=1e-5)
    assert f[1] < 0 and f[2] < -60 and torch.isfinite(f[2])  # p_t = 0: large but finite
    u = genattack_fitness(p, y, None)  # untargeted: log-odds of not being y
    assert u[0] < 0 and u[1] > 0
    assert genattack_fitness(torch.full((1, 3), float("nan")), y[:1], None).item() == float("-inf")


def test_genattack_queries_elite_not_paid_twice(victim, test_xy):
    """Independently of the oracle: the first generation is N rows per sample, every later one N-1
    (the elite is carried over with its fitness), all samples in one call; the budget is never passed."""
    x0, y = test_xy[0][:8], test_xy[1][:8]
    t = targets_for(y)
    m = CallLog(victim, x0)
    # eps 0.02 targeted: nothing succeeds, so every sample stays to the end
    r = run(GenAttack(pop_size=6), m, x0, y, "linf", 0.02, 6 + 5 * 7 + 3, targets=t)
    assert not r.success.any()
    assert m.calls == [8 * 6] + [8 * 5] * 7 + [8 * 3]  # the 9th generation is cut by the budget: 3 of 5 rows answered
    assert (r.queries == 44).all() and (m.per_sample == 44).all()


@pytest.mark.slow
def test_genattack_targeted_beats_noise(victim, test_xy):
    x0, y = case(test_xy)
    t = targets_for(y)
    r = run(GenAttack(), victim, x0, y, "linf", 0.3, 1500, targets=t)
    base = noise_rate(victim, test_xy, "linf", 0.3, 1500, targeted=True)
    certified(victim, x0, y, r, "linf", 0.3, targets=t)
    assert rate(r) >= 0.4 and rate(r) - base >= 0.3, (rate(r), base)


@pytest.mark.slow
def test_genattack_untargeted_reduced_adaptive(victim, test_xy):
    """Dimensionality reduction (14x14 noise, bilinear to 28x28) and the adaptive schedule work end to end."""
    x0, y = case(test_xy)
    r = run(GenAttack(resize=14, adaptive=True, plateau_patience=5), victim, x0, y, "linf", 0.3, 1000)
    base = noise_rate(victim, test_xy, "linf", 0.3, 1000)
    certified(victim, x0, y, r, "linf", 0.3)
    assert rate(r) >= 0.6 and rate(r) - base >= 0.4, (rate(r), base)


def test_genattack_deterministic(victim, test_xy):
    x0, y = test_xy[0][:5], test_xy[1][:5]
    a = run(GenAttack(), victim, x0, y, "linf", 0.3, 300, targets=targets_for(y), seed=3)
    b = run(GenAttack(), victim, x0, y, "linf", 0.3, 300, targets=targets_for(y), seed=3)
    assert torch.equal(a.queries_at_success, b.queries_at_success) and torch.equal(a.best_x, b.best_x)


def test_bad_parameters():
    for make in (lambda: GenAttack(pop_size=1), lambda: GenAttack(mutation_prob=2), lambda: GenAttack(resize=0),
                 lambda: NES(n_samples=3), lambda: ZOO(binary_search_steps=3), lambda: Square(p_init=0),
                 lambda: RandomNoise(draws_per_step=0), lambda: ZOO(lr=0)):
        with pytest.raises(RobenchError):
            make()


def test_genattack_is_linf_only(victim, test_xy):
    """Declared (``norms``) and enforced before the run starts, in one line."""
    import robench

    assert GenAttack.norms == ("linf",)
    with pytest.raises(RobenchError, match="supports budget.norm linf, got 'l2'"):
        robench.evaluate(victim, test_xy[0][:2], test_xy[1][:2], attack="genattack", budget=robench.Budget("l2", 1.0))


# ---------------------------------------------------------------- Square
def test_p_selection_schedule():
    assert p_selection(0.8, 0, 10000) == 0.8 and p_selection(0.8, 11, 10000) == 0.4
    assert p_selection(0.8, 9000, 10000) == 0.8 / 512
    assert p_selection(0.8, 100, 1000) == 0.8 / 16  # rescaled: iteration 100 of 1,000 is 1,000 of 10,000


def test_square_linf_untargeted_beats_noise(victim, test_xy):
    x0, y = case(test_xy)
    m = CallLog(victim, x0)
    r = run(Square(), m, x0, y, "linf", 0.3, 1500)  # the p schedule is tied to the budget: not too small
    base = noise_rate(victim, test_xy, "linf", 0.3, 1500)
    certified(victim, x0, y, r, "linf", 0.3)
    assert rate(r) >= 0.9 and rate(r) - base >= 0.5, (rate(r), base)
    # one row per active sample per call; queries per sample as the model saw them
    assert m.calls[0] == N_CASE and all(c <= N_CASE for c in m.calls)
    assert sum(m.calls) == int(r.queries.sum())


@pytest.mark.slow
def test_square_l2_beats_noise(victim, test_xy):
    x0, y = case(test_xy)
    r = run(Square(), victim, x0, y, "l2", 2.0, 1000)
    base = noise_rate(victim, test_xy, "l2", 2.0, 1000)
    certified(victim, x0, y, r, "l2", 2.0)
    assert rate(r) >= 0.25 and rate(r) - base >= 0.2, (rate(r), base)


def test_square_targeted(victim, test_xy):
    x0, y = case(test_xy)
    t = targets_for(y)
    r = run(Square(), victim, x0, y, "linf", 0.3, 1500, targets=t)
    base = noise_rate(victim, test_xy, "linf", 0.3, 1500, targeted=True)
    certified(victim, x0, y, r, "linf", 0.3, targets=t)
    assert rate(r) >= 0.4 and rate(r) - base >= 0.3, (rate(r), base)


# ---------------------------------------------------------------- NES
def test_nes_linf_beats_noise_and_counts(victim, test_xy):
    x0, y = case(test_xy)
    m = CallLog(victim, x0)
    r = run(NES(step_size=0.05), m, x0, y, "linf", 0.3, 1000)
    base = noise_rate(victim, test_xy, "linf", 0.3, 1000)
    certified(victim, x0, y, r, "linf", 0.3)
    assert rate(r) >= 0.4 and rate(r) - base >= 0.25, (rate(r), base)
    assert m.calls[0] == N_CASE * 51  # the iterate and its 50 antithetic probes, every sample, one call
    assert sum(m.calls) == int(r.queries.sum()) and (r.queries <= 1000).all()


def test_nes_l2_beats_noise(victim, test_xy):
    x0, y = case(test_xy)
    r = run(NES(step_size=0.05), victim, x0, y, "l2", 2.0, 1000)
    base = noise_rate(victim, test_xy, "l2", 2.0, 1000)
    certified(victim, x0, y, r, "l2", 2.0)
    assert rate(r) >= 0.1 and rate(r) > base, (rate(r), base)


# ---------------------------------------------------------------- ZOO
@pytest.mark.slow
def test_zoo_beats_noise(victim, test_xy):
    """A small case: lr = eps makes each first Adam step a full signed step, so 1,500 queries
    (5 iterations of 128 coordinates) suffice."""
    x0, y = case(test_xy)
    r = run(ZOO(lr=0.3), victim, x0, y, "linf", 0.3, 1500)
    base = noise_rate(victim, test_xy, "linf", 0.3, 1500)
    certified(victim, x0, y, r, "linf", 0.3)
    assert rate(r) >= 0.35 and rate(r) - base >= 0.2, (rate(r), base)


def test_zoo_counts_and_variants(victim, test_xy):
    """2K+1 rows per sample per iteration in one call; the reduced space, L2, targeting and the c
    search run and stay inside the ball and the box."""
    x0, y = test_xy[0][:4], test_xy[1][:4]
    m = CallLog(victim, x0)
    r = run(ZOO(coords_per_step=8), m, x0, y, "linf", 0.02, 17 * 3)
    assert m.calls == [4 * 17] * 3 and (r.queries == 51).all() and torch.equal(m.per_sample, r.queries)
    t = targets_for(y)
    for kw, norm, eps in (({"resize": 14}, "linf", 0.3), ({"resize": 14}, "l2", 2.0), ({}, "l2", 2.0),
                          ({"binary_search_steps": 2, "max_iterations": 2, "const": 0.01}, "linf", 0.3)):
        r = run(ZOO(coords_per_step=32, lr=0.1, **kw), victim, x0, y, norm, eps, 65 * 5, targets=t)
        certified(victim, x0, y, r, norm, eps, targets=t)
        assert (r.queries <= 65 * 5).all()


# ---------------------------------------------------------------- noise
def test_noise_spends_the_budget_in_batches(victim, test_xy):
    x0, y = test_xy[0][:6], test_xy[1][:6]
    m = CallLog(victim, x0)
    r = run(RandomNoise(draws_per_step=40), m, x0, y, "l2", 1.0, 100)
    assert not r.success.any()
    assert m.calls == [6 * 40, 6 * 40, 6 * 20] and (r.queries == 100).all()


# ---------------------------------------------------------------- CLI: configs and n_correct
def test_cli_square_first_n_correct(ckpt_dir, tmp_path):
    """`n_correct` ends the slice at its n-th originally-correct image: exactly n are attacked."""
    import json

    from tests.conftest import run_cli

    run = tmp_path / "run"
    p = run_cli("attack", "attack=square", "n_correct=12", "dataset.n_samples=400", "budget.max_queries=1000",
                "progress=false", f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={run}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = json.loads((run / "summary.json").read_text())
    assert s["n_correct"] == 12 and s["n_attacked"] == 12 and 12 <= s["n_samples"] <= 14
    assert s["success_rate"] >= 0.75
    p = run_cli("attack", "attack=noise", "n_correct=0", f"checkpoint_dir={ckpt_dir}", cwd=tmp_path)
    assert p.returncode == 2 and "n_correct must be an integer >= 1" in p.stderr


def test_prefix_with_n_correct():
    from robench.evaluation.prepare import prefix_with_n_correct

    c = torch.tensor([True, False, True, True, False])
    assert prefix_with_n_correct(c, 2) == 3 and prefix_with_n_correct(c, 3) == 4 and prefix_with_n_correct(c, 9) == 5


def _linf_step_reference(x, x0, p, eps, generator, box):
    """Square's Linf step as the paper states it: redraw the whole sign pattern, judged on the full image,
    while it would not change the point (up to 10 draws). The fast step must give the same candidate."""
    import math

    from robench.attacks.score._common import bview
    from robench.attacks.score.square import _window_mask
    from robench.geometry import LINF_BALL

    b, c, h, w = x.shape
    s = min(max(int(round(math.sqrt(p * h * w))), 1), h - 1)
    mask, _, _ = _window_mask(b, h, w, s, generator, x.device, s)
    new = (x - x0).clone()
    todo = torch.ones(b, dtype=torch.bool)
    for _ in range(10):
        signs = (torch.randint(0, 2, (b, c, 1, 1), generator=generator) * 2 - 1).to(x.dtype) * eps
        new = torch.where(mask & bview(todo, 4), signs.expand(b, c, h, w), new)
        todo = ~((((x0 + new).clamp(*box) - x).abs() * mask).flatten(1).amax(1) > 1e-7)
        if not bool(todo.any()):
            break
    return LINF_BALL.clip(x0, new, eps, box)


@pytest.mark.parametrize("c", [1, 3])
def test_square_linf_step_equals_the_papers_redraw_loop(c):
    # images at the box's edges (0 and 1, where one sign changes nothing) and a current point already at +-eps
    # on many pixels, so rows need several redraws and some never change; small and large squares
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        b, eps = 17, [0.3, 0.1, 8 / 255][trial % 3]
        x0 = torch.rand(b, c, 12, 12, generator=g)
        x0 = torch.where(x0 < 0.4, 0.0, torch.where(x0 > 0.8, 1.0, x0))
        signs = torch.randint(0, 3, x0.shape, generator=g) - 1
        x = (x0 + signs * eps).clamp(0, 1)
        p = [0.8, 0.05, 0.01, 0.002][trial % 4]
        seed = 1000 + trial
        ref = _linf_step_reference(x, x0, p, eps, torch.Generator().manual_seed(seed), (0.0, 1.0))
        gen = torch.Generator().manual_seed(seed)
        got = Square._linf_step(x, x0, p, eps, gen, (0.0, 1.0))
        assert torch.equal(got, ref), trial
        # and the random stream is left where the reference leaves it (the next steps draw the same numbers)
        g2 = torch.Generator().manual_seed(seed)
        _linf_step_reference(x, x0, p, eps, g2, (0.0, 1.0))
        assert torch.equal(torch.rand(4, generator=gen), torch.rand(4, generator=g2))


def test_square_sign_redraw_in_one_draw_equals_the_loop():
    # the CPU path (all draws at once, then the generator rewound and advanced) against the loop other devices
    # run: the same bits and the same generator state after, for tables where rows need 1 to 10 draws or never move
    from robench.attacks.score.square import _redraw_signs

    g = torch.Generator().manual_seed(3)
    for trial in range(200):
        b, c = int(torch.randint(1, 40, (1,), generator=g)), [1, 3][trial % 2]
        moves = torch.rand(2, b, c, generator=g) < [0.05, 0.5, 0.9][trial % 3]
        seed = 7000 + trial
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        a = _redraw_signs(moves, g1, one_draw=True)
        r = _redraw_signs(moves, g2, one_draw=False)
        assert torch.equal(a, r), trial
        assert torch.equal(g1.get_state(), g2.get_state()), trial
