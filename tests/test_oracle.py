"""The oracle's counts are checked against an independent counter wrapped around the model."""
import pytest
import torch
from torch import nn

from robench.attacks.whitebox.pgd import PGD
from robench.referee.oracle import Oracle
from robench.referee.types import AccessError


class CountingModel(nn.Module):
    """Counts every row the victim evaluates, attributing each to the nearest clean image (perturbations in
    these tests are far smaller than the distance between two different images)."""

    def __init__(self, model, x0):
        super().__init__()
        self.model, self.x0 = model, x0.flatten(1)
        self.per_sample = torch.zeros(len(x0), dtype=torch.long)
        self.rows = 0
        self.enabled = True

    def forward(self, x):
        if self.enabled:
            owner = torch.cdist(x.detach().flatten(1), self.x0).argmin(1)
            self.per_sample += torch.bincount(owner, minlength=len(self.x0))
            self.rows += len(x)
        return self.model(x)


class MeanModel(nn.Module):
    """Toy 2-class victim: class 1 iff the mean pixel exceeds 0.5 (logits are +/- that margin)."""

    def forward(self, x):
        m = x.flatten(1).mean(1) - 0.5
        return torch.stack([-m, m], 1) * 10


def test_population_counts_match_independent_count(victim, test_xy):
    x0, y = test_xy[0][:20], test_xy[1][:20]
    cm = CountingModel(victim, x0)
    o = Oracle(cm, x0, y, access="scores", norm="linf", eps=0.05, max_queries=37, num_classes=10)
    g = torch.Generator().manual_seed(0)
    asked = torch.zeros(20, dtype=torch.long)
    for step in range(12):  # populations of 5 rows per sample, in shuffled order, some samples skipped
        idx = torch.arange(20).repeat_interleave(5)
        idx = idx[torch.randperm(len(idx), generator=g)]
        idx = idx[idx % 7 != step % 7]
        x = (x0[idx] + (torch.rand(len(idx), *x0.shape[1:], generator=g) * 2 - 1) * 0.05).clamp(0, 1)
        p = o.scores(x, idx)
        answered = ~torch.isnan(p).any(1)
        asked += torch.bincount(idx, minlength=20)
        # rows past a sample's budget are not evaluated and come back NaN
        assert torch.equal(torch.bincount(idx[answered], minlength=20), torch.minimum(
            torch.bincount(idx, minlength=20), 37 - (o.queries - torch.bincount(idx[answered], minlength=20))))
    cm.enabled = False
    o.finalize()
    assert torch.equal(o.queries, cm.per_sample)
    assert int(o.queries.sum()) == cm.rows
    assert torch.equal(o.queries, torch.clamp(asked, max=37))
    assert int(o.queries.max()) == 37  # the budget binds, and is never exceeded


def test_gradient_queries_counted(victim, test_xy):
    x0, y = test_xy[0][:30], test_xy[1][:30]
    cm = CountingModel(victim, x0)
    o = Oracle(cm, x0, y, access="gradient", norm="linf", eps=0.05, max_queries=10_000, num_classes=10)
    PGD(steps=7, restarts=2, early_stop=False).run(o, torch.Generator().manual_seed(0))
    cm.enabled = False
    o.finalize()
    assert torch.equal(o.queries, cm.per_sample)
    # 7 gradient rows + 1 final forward per restart; a sample robust after restart 1 is attacked again;
    # once the oracle has seen a sample succeed it answers no more of its rows
    q, s = o.queries, o.success
    assert (q[~s] == 16).all() and torch.equal(q[s], o.queries_at_success[s]) and (q[s] <= 16).all()
    assert torch.equal(o.grad_queries[~s], torch.full_like(q[~s], 14))


def test_pgd_respects_budget(victim, test_xy):
    x0, y = test_xy[0][:30], test_xy[1][:30]
    cm = CountingModel(victim, x0)
    o = Oracle(cm, x0, y, access="gradient", norm="linf", eps=0.02, max_queries=5, num_classes=10)
    PGD(steps=40, restarts=3).run(o, torch.Generator().manual_seed(0))
    assert int(cm.per_sample.max()) <= 5 and torch.equal(o.queries, cm.per_sample)


def test_access_levels_enforced(victim, test_xy):
    x0, y = test_xy[0][:4], test_xy[1][:4]
    o = Oracle(victim, x0, y, access="label", eps=0.1, max_queries=10, num_classes=10)
    assert o.labels(x0).shape == (4,)
    with pytest.raises(AccessError):
        o.scores(x0)
    with pytest.raises(AccessError):
        o.gradient(x0, lambda lg, i: lg.sum(1))
    o = Oracle(victim, x0, y, access="scores", eps=0.1, max_queries=10, num_classes=10)
    o.scores(x0)
    with pytest.raises(AccessError):
        o.logits(x0)


def test_first_success_query_number_and_criterion():
    # 3 samples, all class 0 (mean 0.3); class 1 needs mean > 0.5
    x0 = torch.full((3, 1, 4, 4), 0.3)
    y = torch.zeros(3, dtype=torch.long)
    o = Oracle(MeanModel(), x0, y, access="label", norm="linf", eps=0.25, max_queries=100, num_classes=2)
    # sample 0: rows with mean 0.4, 0.52 (success: 2nd query), 0.54
    # sample 1: mean 0.6 but outside the eps-ball (0.3 away) -> adversarial, not a success
    # sample 2: mean 0.52 but one pixel above 1 -> not a valid image
    bad = torch.full((1, 4, 4), 0.52)
    bad[0, 0, 0] = 1.05
    xs = torch.stack([torch.full((1, 4, 4), v) for v in (0.4, 0.52, 0.54, 0.6)] + [bad])
    idx = torch.tensor([0, 0, 0, 1, 2])
    assert o.labels(xs, idx).tolist() == [0, 1, 1, 1, 1]
    assert o.success.tolist() == [True, False, False]
    assert o.queries_at_success.tolist() == [2, -1, -1]
    assert o.queries.tolist() == [3, 1, 1]
    # eps-bounded run: a successful sample is done, its further rows are not answered nor counted
    assert o.labels(xs[:1], idx[:1]).tolist() == [-1] and o.queries.tolist() == [3, 1, 1]
    # the best point of sample 0 is the least distorted success (mean 0.52, Linf 0.22)
    assert torch.allclose(o.best_x[0], torch.full((1, 4, 4), 0.52))
    # sample 1 succeeds later, inside the ball: its query number counts every earlier row
    o.labels(torch.full((2, 1, 4, 4), 0.45).index_put_((torch.tensor([1]),), torch.full((1, 4, 4), 0.53)), torch.tensor([1, 1]))
    assert o.queries_at_success.tolist() == [2, 3, -1]
    r = o.finalize()
    assert r.success.tolist() == [True, True, False] and r.adversarial.tolist() == [True, True, False]  # out of [0,1] is no image


def test_targeted_criterion():
    x0 = torch.full((2, 1, 2, 2), 0.3)
    y = torch.zeros(2, dtype=torch.long)
    o = Oracle(MeanModel(), x0, y, access="label", eps=1.0, targets=torch.tensor([1, 0]), max_queries=10, num_classes=2)
    o.labels(torch.full((2, 1, 2, 2), 0.9))
    assert o.success.tolist() == [True, False]  # sample 1's "target" is its own label: predicted 1 != 0


def test_minimal_distortion_mode_keeps_improving():
    x0 = torch.full((1, 1, 2, 2), 0.3)
    o = Oracle(MeanModel(), x0, torch.zeros(1, dtype=torch.long), access="label", norm="l2", eps=0.5,
               max_queries=10, stop_on_success=False, num_classes=2)
    for v in (0.9, 0.7, 0.55, 0.45, 0.8):
        o.labels(torch.full((1, 1, 1, 2, 2), v)[0], torch.tensor([0]))
    assert o.queries_at_success.tolist() == [3]  # L2 of 0.25*2=0.5 at the 3rd query (0.9, 0.7 too far)
    assert torch.allclose(o.best_dist, torch.tensor([0.5])) and float(o.best_x.mean()) == pytest.approx(0.55)


class FlakyModel(nn.Module):
    """Misclassifies during the attack, then behaves: a success the victim does not confirm."""

    def __init__(self, model):
        super().__init__()
        self.model, self.fooled = model, True

    def forward(self, x):
        lg = self.model(x)
        return -lg if self.fooled else lg


def test_final_recheck_revokes_unconfirmed_successes(victim, test_xy):
    x0, y = test_xy[0][:10], test_xy[1][:10]
    fm = FlakyModel(victim)
    o = Oracle(fm, x0, y, access="label", eps=0.1, max_queries=10, num_classes=10)
    o.labels(x0)
    assert bool(o.success.all())
    fm.fooled = False
    r = o.finalize()
    assert r.claimed.all() and not r.success.any()
    assert torch.equal(r.queries, torch.ones(10, dtype=torch.long))  # the re-check is not counted


def test_an_attack_cannot_claim_success(victim, test_xy):
    """Whatever an attack returns or sets on itself, success is what the oracle saw."""
    from robench.attacks.base import Attack

    class Liar(Attack):
        access = "label"

        def run(self, oracle, generator):
            oracle.labels(oracle.x0)  # clean points: correct, so not adversarial
            oracle.success[:] = True  # edits a copy: the bookkeeping is the oracle's own
            oracle.queries[:] = 0
            oracle.x0.add_(0.5)
            return torch.ones(oracle.n, dtype=torch.bool)

    x0, y = test_xy[0][:10], test_xy[1][:10]
    o = Oracle(victim, x0, y, access="label", eps=0.3, max_queries=10, num_classes=10)
    Liar().run(o, torch.Generator())
    r = o.finalize()
    assert not r.success.any() and not r.claimed.any()
    assert r.queries.tolist() == [1] * 10 and torch.equal(o.x0, x0)


class _Quantize(__import__("robench.defenses.base", fromlist=["InputDefense"]).InputDefense):
    """Non-differentiable test transform: round to 4 levels."""

    def transform(self, x):
        return torch.round(x * 3) / 3


def test_bpda_switches_gradient_of_non_differentiable_defense(victim, test_xy):
    from robench.defenses.base import set_bpda

    x, y = test_xy[0][:8], test_xy[1][:8]
    model = torch.nn.Sequential(_Quantize(), victim).eval()
    loss = lambda logits, i: torch.nn.functional.cross_entropy(logits, y[i], reduction="none")
    o = Oracle(model, x, y, access="gradient", eps=0.3, max_queries=10)
    _, g = o.gradient(x, loss)
    assert float(g.abs().sum()) == 0.0  # no gradient path: the naive attacker's view
    assert set_bpda(model, True) == 1
    o = Oracle(model, x, y, access="gradient", eps=0.3, max_queries=10)
    logits, g = o.gradient(x, loss)
    assert float(g.abs().sum()) > 0
    with torch.no_grad():  # forward value is still the defended one
        assert torch.allclose(logits, model(x))


def test_eot_counts_every_draw_and_averages(victim, test_xy):
    x, y = test_xy[0][:4], test_xy[1][:4]

    class Noise(torch.nn.Module):
        def forward(self, z):
            return z + 0.05 * torch.randn_like(z)

    model = torch.nn.Sequential(Noise(), victim).eval()
    loss = lambda logits, i: torch.nn.functional.cross_entropy(logits, y[i], reduction="none")
    o = Oracle(model, x, y, access="gradient", eps=0.3, max_queries=7, eot_samples=3)
    _, g1 = o.gradient(x, loss)
    assert o.queries.tolist() == [3] * 4 and o.grad_queries.tolist() == [3] * 4
    _, g2 = o.gradient(x, loss)
    assert o.queries.tolist() == [6] * 4
    logits, g3 = o.gradient(x, loss)  # only one draw left per sample: still answered, budget held
    assert o.queries.tolist() == [7] * 4 and not torch.isnan(logits).any()
    assert float(g3.abs().sum()) > 0
    # averaging: the mean of 3 noisy gradients differs from any single one
    assert not torch.allclose(g1, g2)


def test_rank_within_group_matches_a_python_count():
    # the fast path (no sample twice in a call) and the general one, against counting in Python
    from robench.referee.oracle import _rank_within_group

    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = int(torch.randint(1, 12, (1,), generator=g))
        m = int(torch.randint(0, 30, (1,), generator=g))
        idx = torch.randperm(n, generator=g)[:m] if trial % 2 else torch.randint(0, n, (m,), generator=g)
        seen, want = {}, []
        for i in idx.tolist():
            want.append(seen.get(i, 0))
            seen[i] = seen.get(i, 0) + 1
        rank, counts = _rank_within_group(idx, n)
        assert (rank.tolist() if rank is not None else [0] * len(idx)) == want
        assert rank is None or any(want), "None stands for all-zero ranks: the fast path must take them"
        assert counts.tolist() == [idx.tolist().count(i) for i in range(n)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_non_finite_logits_stop_and_large_finite_ones_do_not(dtype):
    # the oracle checks one sum of the logits first: a sum that overflows on large but finite logits must
    # not stop the run, and one NaN, +inf or -inf anywhere must, whatever the row and dtype
    from robench.errors import VictimError

    big = torch.finfo(dtype).max / 2

    class Fixed(nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, x):
            return self.out[: len(x)]

    x0, y = torch.full((6, 1, 2, 2), 0.5), torch.zeros(6, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        out = ((torch.rand(6, 3, generator=g, dtype=torch.float64) * 2 - 1) * big).to(dtype)
        out[:, 0] = big  # finite; the sum of the column alone overflows
        o = Oracle(Fixed(out), x0, y, access="scores", eps=0.1, max_queries=10, num_classes=3)
        o.scores(x0)
        assert o.broken is None
        bad = out.clone()
        r, c = int(torch.randint(0, 6, (1,), generator=g)), int(torch.randint(0, 3, (1,), generator=g))
        bad[r, c] = [float("nan"), float("inf"), -float("inf")][trial % 3]
        o = Oracle(Fixed(bad), x0, y, access="scores", eps=0.1, max_queries=10, num_classes=3)
        with pytest.raises(VictimError, match="non-finite logits"):
            o.scores(x0)


def test_jacobian_answers_and_counts_as_m_gradient_calls(victim, test_xy):
    # one forward and m backward passes against m gradient() calls on the same rows: the same logits and
    # gradients (bit for bit), counts, successes and their query numbers; repeated samples in a call
    x0, y = test_xy[0][:6], test_xy[1][:6]
    g = torch.Generator().manual_seed(0)
    hits = 0
    for trial in range(12):
        m = [2, 3, 9][trial % 3]
        idx = torch.randint(0, 6, (10,), generator=g)
        cols = torch.stack([torch.randperm(10, generator=g)[:m] for _ in range(10)])

        def loss(z, i, cols=cols):
            return z.gather(1, cols) - z.gather(1, y[i, None])

        a = Oracle(victim, x0, y, access="gradient", eps=1.0, max_queries=10_000, num_classes=10, stop_on_success=False)
        b = Oracle(victim, x0, y, access="gradient", eps=1.0, max_queries=10_000, num_classes=10, stop_on_success=False)
        for _ in range(3):
            w = torch.rand(10, 1, 1, 1, generator=g)  # towards another sample's image: some rows misclassified
            x = (1 - w) * x0[idx] + w * x0[(idx + 1) % 6]
            la, ja = a.jacobian(x, loss, m, idx)
            per = [b.gradient(x, lambda z, i, j=j: loss(z, i)[:, j], idx) for j in range(m)]
            assert torch.equal(la, per[0][0]) and torch.equal(ja, torch.stack([gb for _, gb in per], 1))
        ra, rb = a.finalize(), b.finalize()
        for f in ("queries", "grad_queries", "success", "claimed", "queries_at_success", "adversarial", "best_x"):
            assert torch.equal(getattr(ra, f), getattr(rb, f)), (trial, f)
        hits += int(ra.success.sum())
    assert 0 < hits < 12 * 6  # the comparison covers successes and misses


def test_jacobian_budget_and_query_numbers_match_an_independent_count(victim, test_xy):
    x0, y = test_xy[0][:5], test_xy[1][:5]
    g = torch.Generator().manual_seed(1)
    for trial in range(20):
        m = int(torch.randint(2, 6, (1,), generator=g))
        mq = int(torch.randint(m, 5 * m, (1,), generator=g))
        o = Oracle(victim, x0, y, access="gradient", eps=1.0, max_queries=mq, num_classes=10, stop_on_success=False)
        used = torch.zeros(5, dtype=torch.long)
        for call in range(4):
            idx = torch.randint(0, 5, (7,), generator=g)
            x = x0[idx]
            logits, _ = o.jacobian(x, lambda z, i: z[:, :m] - z[:, m:2 * m], m, idx)
            ans = ~torch.isnan(logits[:, 0])
            # independent: a row is answered iff its sample has m queries left after the earlier rows of the call
            exp = torch.zeros(7, dtype=torch.bool)
            for r in range(7):
                s = int(idx[r])
                if used[s] + m <= mq:
                    used[s] += m
                    exp[r] = True
            assert torch.equal(ans, exp), (trial, call)
        assert torch.equal(o.queries, used) and torch.equal(o.grad_queries, used)
    o = Oracle(victim, x0, y, access="gradient", eps=1.0, max_queries=100, num_classes=10)
    with pytest.raises(ValueError, match="m must be an integer"):
        o.jacobian(x0, lambda z, i: z, 0)
    with pytest.raises(ValueError, match=r"\(rows, m\)"):
        o.jacobian(x0, lambda z, i: z[:, :1], 2)


@pytest.mark.parametrize("stop", [True, False])
def test_admission_and_active_match_an_independent_count_with_successes(stop):
    # random label calls (samples repeated within a call, some rows adversarial): every answered row, every query
    # count, success and active flag against a count kept in Python
    k = 4

    class Parity(torch.nn.Module):  # label = (number of bright pixels) mod k: any row can be made adversarial
        def forward(self, x):
            return torch.nn.functional.one_hot((x.flatten(1) > 0.5).sum(1) % k, k).float()

    g = torch.Generator().manual_seed(3)
    for trial in range(30):
        n = int(torch.randint(1, 6, (1,), generator=g))
        mq = int(torch.randint(1, 9, (1,), generator=g))
        x0 = torch.zeros(n, 1, 2, 2)
        y = torch.zeros(n, dtype=torch.long)
        o = Oracle(Parity(), x0, y, access="label", norm="linf", eps=1.0, max_queries=mq, num_classes=k,
                   stop_on_success=stop)
        used, won = [0] * n, [False] * n
        for call in range(6):
            m = int(torch.randint(0, 9, (1,), generator=g))
            idx = torch.randint(0, n, (m,), generator=g)
            x = (torch.rand(m, 1, 2, 2, generator=g) > 0.7).float()
            out = o.labels(x, idx)
            exp = []
            for r in range(m):
                s = int(idx[r])
                answer = used[s] < mq and not (stop and won[s])
                exp.append(answer)
                if answer:
                    used[s] += 1
            for r in range(m):  # successes are judged after admission of the whole call
                if exp[r] and int(out[r]) != 0:
                    won[int(idx[r])] = True
            assert (out >= 0).tolist() == exp, (trial, call)
            assert o.queries.tolist() == used and o.success.tolist() == won
            assert o.active.tolist() == [u < mq and not (stop and w) for u, w in zip(used, won)]
            assert o.active_indices().tolist() == [i for i in range(n) if o.active[i]]


@pytest.mark.parametrize("eps", [None, 0.9])
def test_deferred_booking_equals_judging_each_call_row_by_row(eps, monkeypatch):
    # With no stop on success the oracle defers its judging and books rows in bulk. Random label calls (samples
    # repeated within a call, points on a 0.5 grid so that many distortions tie, some rows outside the box), read
    # at random moments (each read books what is pending) and with a small pending limit in half the trials: first
    # successes, best points, distortions and the anytime curve equal a row-by-row reference kept in Python, which
    # judges each call as it comes (of equal keys a later call's row is no improvement; within a call the last
    # row of the smallest key is kept).
    import robench.referee.oracle as om

    k = 3

    class Parity(torch.nn.Module):  # label = (number of pixels >= 0.5) mod k
        def forward(self, x):
            return torch.nn.functional.one_hot((x.flatten(1) >= 0.5).sum(1) % k, k).float()

    g = torch.Generator().manual_seed(5)
    inf = float("inf")
    for trial in range(40):
        monkeypatch.setattr(om, "_PENDING_VALUES", 1 << 22 if trial % 2 else 12)
        n = int(torch.randint(1, 5, (1,), generator=g))
        mq = int(torch.randint(3, 30, (1,), generator=g))
        cps = sorted({int(c) for c in torch.randint(1, mq + 1, (3,), generator=g)})
        x0 = torch.zeros(n, 1, 2, 2)
        y = torch.zeros(n, dtype=torch.long)
        o = Oracle(Parity(), x0, y, access="label", norm="l2", eps=eps, max_queries=mq, num_classes=k,
                   stop_on_success=False, checkpoints=cps)
        used = [0] * n
        won, q_at, call_at = [False] * n, [-1] * n, [-1] * n
        key, best_d, best_x = [inf] * n, [inf] * n, [x0[i].clone() for i in range(n)]
        dist_at = [[inf] * len(cps) for _ in range(n)]
        answered_calls = 0
        for _ in range(12):
            m = int(torch.randint(0, 7, (1,), generator=g))
            idx = torch.randint(0, n, (m,), generator=g)
            x = torch.randint(0, 3, (m, 1, 2, 2), generator=g).float() / 2
            x[torch.rand(m, generator=g) < 0.1] += 0.75  # some rows leave the box
            out = o.labels(x, idx)
            assert sum(p[0].numel() for p in o._pending) < om._PENDING_VALUES  # the copies stay under the limit
            rows = []
            for r in range(m):
                s = int(idx[r])
                if used[s] < mq:
                    used[s] += 1
                    rows.append((r, s, used[s]))
            assert (out >= 0).sum() == len(rows)
            if m and not rows:  # nothing answered: not a call (an empty call is one, with nothing to judge)
                continue
            call = answered_calls
            answered_calls += 1
            cand = {}
            for r, s, qn in rows:
                lab = int(((x[r] >= 0.5).sum()) % k)
                valid = lab != 0 and bool(x[r].min() >= 0) and bool(x[r].max() <= 1)
                if not valid:
                    continue
                d = float(x[r].flatten().norm())  # x0 = 0
                within = eps is None or d <= eps + 1e-5
                if within and not won[s]:
                    won[s], q_at[s], call_at[s] = True, qn, call
                for j, c in enumerate(cps):
                    if qn <= c:
                        dist_at[s][j] = min(dist_at[s][j], d)
                kk = d if within else d + 1e6
                if kk <= cand.get(s, (inf,))[0]:  # the last row of the smallest key in this call
                    cand[s] = (kk, d, r)
            for s, (kk, d, r) in cand.items():
                if kk < key[s]:
                    key[s], best_d[s], best_x[s] = kk, d, x[r].clone()
            if torch.rand(1, generator=g) < 0.3:  # a read books what is pending
                assert o.success.tolist() == won and o.best_dist.tolist() == pytest.approx(best_d)
        res = o.finalize()
        assert res.queries.tolist() == used and res.claimed.tolist() == won, trial
        assert res.queries_at_success.tolist() == q_at, trial
        assert o.best_dist.tolist() == pytest.approx(best_d, rel=1e-6), trial
        assert res.adversarial.tolist() == [d < inf for d in best_d], trial
        assert torch.equal(res.best_x, torch.stack(best_x)), trial
        assert res.dist_at.flatten().tolist() == pytest.approx(sum(dist_at, []), rel=1e-6), trial
        at = [o._call_times[c] - o._t0 if c >= 0 else None for c in call_at]  # the time of the success's call
        assert [None if a != a else a for a in res.seconds_at_success.tolist()] == pytest.approx(at), trial
