"""Input transformations: each does what its paper describes, keeps clean accuracy, and carries the
gradient the attacker is entitled to (none without BPDA, the approximation's with it)."""
import numpy as np
import pytest
import torch

from robench.defenses.base import reseed_defenses, set_bpda
from robench.defenses.compose import DefendedModel, instantiate_input
from robench.defenses.tvm import tv_inpaint
from robench.referee.oracle import Oracle


def defended(victim, name, **params):
    d = DefendedModel(victim, [instantiate_input(name, params)]).eval()
    reseed_defenses(d, 0)
    return d


def acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_jpeg_is_real_jpeg(test_xy):
    """Pillow's round trip agrees with torchvision's own libjpeg-turbo build (an independent codec path)."""
    import warnings

    x = test_xy[0][:8]
    out = instantiate_input("jpeg").transform(x)
    assert out.shape == x.shape and out.dtype == x.dtype and 0 <= out.min() and out.max() <= 1
    assert (out - x).abs().amax(dim=(1, 2, 3)).min() > 0.05  # compression artefacts are real
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg
        except ImportError:
            pytest.skip("torchvision.io has no JPEG codec")
        u8 = (x * 255).round().to(torch.uint8)
        ref = torch.stack(decode_jpeg(encode_jpeg(list(u8), quality=75), mode=ImageReadMode.GRAY)).float() / 255
    assert (out - ref).abs().max() <= 2 / 255 and (out - ref).abs().mean() < 0.2 / 255
    q10 = instantiate_input("jpeg", {"quality": 10}).transform(x)
    assert (q10 - x).abs().mean() > (out - x).abs().mean()  # lower quality, larger error


def test_bit_depth_levels():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(instantiate_input("bit_depth", {"bits": 1}).transform(x), (x >= 0.5).float())
    out = instantiate_input("bit_depth", {"bits": 3}).transform(x)
    assert len(torch.unique(out)) <= 8 and (out - x).abs().max() <= 0.5 / 7 + 1e-6
    assert torch.allclose(out * 7, (out * 7).round(), atol=1e-5)


@pytest.mark.parametrize("size", [2, 3, 4])
def test_median_matches_scipy(size):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(3, 2, 9, 11, generator=torch.Generator().manual_seed(size))
    ref = ndimage.median_filter(x.numpy(), size=(1, 1, size, size), mode="reflect")
    assert torch.allclose(instantiate_input("median_smoothing", {"size": size}).transform(x), torch.from_numpy(ref))


def test_tvm_is_randomized_reproducible_and_ignores_dropped_pixels(test_xy):
    x = test_xy[0][:16]
    t = instantiate_input("tvm")
    t.reseed(3)
    a, b = t.transform(x), t.transform(x)
    assert not torch.equal(a, b)  # a fresh mask per forward
    t.reseed(3)
    assert torch.equal(t.transform(x), a)  # reproducible from the seed
    keep = (torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)) >= 0.5).float()
    scrambled = torch.where(keep.bool(), x, torch.rand_like(x))  # dropped pixels carry no information
    assert torch.allclose(tv_inpaint(x, keep, 0.03, 100), tv_inpaint(scrambled, keep, 0.03, 100), atol=1e-6)
    z = tv_inpaint(x, keep, 0.03, 100)
    holes = 1 - keep
    err, zero_fill = ((z - x).abs() * holes).sum(), (x * holes).sum()
    assert err < 0.6 * zero_fill, (err, zero_fill)  # the reconstruction fills the holes from their neighbours


def test_random_resize_pad_shrinks_into_canvas():
    x = torch.ones(64, 1, 28, 28)
    t = instantiate_input("random_resize_pad")
    out = t.transform(x)
    assert out.shape == x.shape
    ones = out.flatten(1).sum(1)
    sides = ones.sqrt().round()
    assert torch.allclose(ones, sides ** 2) and sides.min() >= 26 and sides.max() <= 28  # an r x r block, r in 26..28
    assert len(torch.unique(sides)) == 3
    assert torch.equal(instantiate_input("random_resize_pad", {"min_scale": 1.0}).transform(x), x)


@pytest.mark.parametrize("name,params,max_drop", [
    ("jpeg", {}, 0.02), ("bit_depth", {}, 0.01), ("bit_depth", {"bits": 1}, 0.02),
    ("median_smoothing", {}, 0.05), ("random_resize_pad", {}, 0.05), ("tvm", {}, 0.08)])
def test_clean_accuracy_is_kept(victim, splits, name, params, max_drop):
    """Clean accuracy on 300 test images stays close to the undefended model's (README lists the
    measured values on all 1,000)."""
    from robench.data import eval_slice

    _, x, y = eval_slice(splits, 300)
    base = acc(victim, x, y)
    assert acc(defended(victim, name, **params), x, y) >= base - max_drop


def test_bpda_gradient(victim, test_xy):
    """Without BPDA a JPEG'd victim passes no gradient; with it the backward is the identity's, so the
    gradient equals the model's own gradient at the transformed point."""
    x, y = test_xy[0][:20], test_xy[1][:20]
    d = defended(victim, "jpeg")
    loss = lambda logits, i: torch.nn.functional.cross_entropy(logits, y[i], reduction="none")
    o = Oracle(d, x, y, access="gradient", eps=0.3, num_classes=10)
    _, g0 = o.gradient(x, loss)
    assert torch.equal(g0, torch.zeros_like(x))
    set_bpda(d, True)
    o = Oracle(d, x, y, access="gradient", eps=0.3, num_classes=10)
    _, g1 = o.gradient(x, loss)
    xt = d.transforms[0].transform(x).requires_grad_(True)
    ref, = torch.autograd.grad(loss(victim(xt), torch.arange(20)).sum(), xt)
    # equal up to float rounding (a backward through the defended model may sum in another order)
    assert float((g1 - ref).abs().max()) <= 1e-3 * float(ref.abs().max()) and g1.abs().sum() > 0
    # a differentiable transform passes the true gradient whatever the switch
    m = defended(victim, "median_smoothing")
    o = Oracle(m, x, y, access="gradient", eps=0.3, num_classes=10)
    _, g2 = o.gradient(x, loss)
    assert g2.abs().sum() > 0


def test_randomized_recheck_is_stricter(victim, test_xy):
    """PGD (BPDA, no EOT) against TVM: some successes seen once do not survive 3 fresh draws."""
    from robench.attacks.whitebox.pgd import PGD

    x, y = test_xy[0][:60], test_xy[1][:60]
    d = defended(victim, "tvm", iterations=40)
    set_bpda(d, True)
    o = Oracle(d, x, y, access="gradient", norm="linf", eps=0.3, max_queries=100, num_classes=10, recheck_repeats=3)
    PGD(steps=10).run(o, torch.Generator().manual_seed(0))
    r = o.finalize()
    assert not (r.success & ~r.claimed).any()
    assert r.claimed.sum() > r.success.sum() > 0, (int(r.claimed.sum()), int(r.success.sum()))


def test_score_eot_averages_and_counts(victim, test_xy):
    """scores() with eot_samples=k: k queries per row (counted independently), the mean probabilities."""
    from tests.test_oracle import CountingModel

    x, y = test_xy[0][:10], test_xy[1][:10]
    d = defended(victim, "random_resize_pad")
    cm = CountingModel(d, x)
    o = Oracle(cm, x, y, access="scores", eps=0.3, max_queries=50, num_classes=10, eot_samples=4)
    p = o.scores(x)
    assert torch.equal(o.queries, torch.full((10,), 4)) and torch.equal(cm.per_sample, o.queries)
    reseed_defenses(d, 0)
    with torch.no_grad():
        ref = victim(d.transforms[0].transform(x.repeat(4, 1, 1, 1))).softmax(1).view(4, 10, 10)  # one batched call
    assert torch.allclose(p, ref.mean(0), atol=1e-5)
    assert not torch.allclose(ref[0], ref[1])  # the draws differ


class CoinModel(torch.nn.Module):
    """A randomized toy victim: class 1 (wrong for label 0) with probability 0.3 on every evaluation."""

    def __init__(self):
        super().__init__()
        self.g = torch.Generator().manual_seed(0)
        self.rows = 0

    def forward(self, x):
        self.rows += len(x)
        wrong = torch.rand(len(x), generator=self.g) < 0.3
        return torch.stack([(~wrong).float(), wrong.float()], 1)


def test_confirm_on_sight():
    """With confirm_repeats=2 a success must be seen 3 times in a row; confirmations are not queries."""
    x, y = torch.full((400, 1, 2, 2), 0.5), torch.zeros(400, dtype=torch.long)
    claimed = {}
    for confirm in (0, 2):
        m = CoinModel()
        o = Oracle(m, x, y, access="label", eps=0.1, num_classes=2, max_queries=5, confirm_repeats=confirm)
        for _ in range(5):
            idx = o.active_indices()
            if len(idx):
                o.labels(x[idx], idx)
        assert int(o.queries.sum()) <= m.rows and int(o.queries.max()) <= 5
        if confirm == 0:
            assert int(o.queries.sum()) == m.rows  # without confirmation every evaluation is a query
        claimed[confirm] = o.success.float().mean().item()
    assert 0.75 <= claimed[0] <= 0.9  # 1 - 0.7^5 = 0.83: lucky draws end the attack
    assert 0.05 <= claimed[2] <= 0.22  # 1 - (1 - 0.3^3)^5 = 0.13
