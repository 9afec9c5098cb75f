"""Training recipes: each trains on a tiny subset; adversarial training measurably raises PGD robust
accuracy over natural training; CAT's eps_i and SPROUT's beta evolve as their papers say; the loop
resumes exactly after an interruption."""
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import TensorDataset

from robench.data.base import DatasetSplits
from robench.defenses.base import TrainContext
from robench.models import build_model
from robench.registry import DEFENSES
from robench.training.loop import train

RECIPES = {"none": {}, "pgd_at": {"eps": 0.3, "steps": 2}, "fgsm_at": {"eps": 0.3}, "fast_at": {"eps": 0.3},
           "trades": {"eps": 0.3, "steps": 2}, "cat": {"eps_max": 0.3, "steps": 2}, "sprout": {},
           "gaussian_aug": {}, "mixup": {}, "label_smoothing": {}, "distillation": {"teacher": "none"},
           "distillation_teacher": {}, "free_at": {"eps": 0.3, "replays": 2},
           "bn_finetune": {"eps": 0.3, "steps": 2}, "bn_finetune_std": {"eps": 0.3}, "advprop": {"eps": 0.3, "steps": 2},
           "robmask": {"eps_max": 0.3, "steps": 2}, "input_grad_reg": {"lam": 10.0},
           "deepcloak": {"eps": 0.3, "retrain": True, "samples": 100}, "magnet": {}}
BN_RECIPES = {"bn_finetune", "bn_finetune_std", "advprop", "robmask"}  # condition a BN model (tests/test_methods.py)


def subset(splits, n_train, n_test=None):
    """The first n images of the embedded MNIST splits as in-memory tensors."""
    def take(ds, n):
        xs, ys = zip(*(ds[i] for i in range(n)))
        return TensorDataset(torch.stack(xs).float(), torch.as_tensor(ys))
    return DatasetSplits(splits.name, take(splits.train, n_train), take(splits.test, n_test or n_train),
                         splits.num_classes, splits.shape, splits.mean, splits.std)


def tcfg(**kw):
    base = {"epochs": 1, "batch_size": 32, "optimizer": "adam", "lr": 1e-3, "schedule": "none"}
    base.update(kw)
    return OmegaConf.create(base)


def make_recipe(name, small, **over):
    r = DEFENSES.get(name)(**{**RECIPES[name], **over})
    r.bind(TrainContext(splits=small, load_model=lambda d: build_model("small_cnn", small, {"depth": 1, "width": 8})))
    return r


def test_every_recipe_is_tested():
    """Every registered training recipe (input transformations and detectors are tested elsewhere)."""
    from robench.defenses.compose import _kind

    assert set(RECIPES) == {n for n in DEFENSES.names() if _kind(n) == "train"}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_trains_a_few_steps(name, splits, tmp_path):
    small = subset(splits, 96, 64)
    torch.manual_seed(0)
    model = build_model("small_cnn_bn" if name in BN_RECIPES else "small_cnn", small, {"depth": 1, "width": 8})
    recipe = make_recipe(name, small)
    model = recipe.prepare_model(model)
    before = [p.detach().clone() for p in model.parameters()]
    m = train(model, recipe, small, tcfg(), torch.device("cpu"), seed=0,
              log_path=tmp_path / "log.csv", progress=False)
    assert math.isfinite(m["history"][0]["train_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "no weight moved"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert 0 <= m["clean_accuracy"] <= 1 and 0 <= m["train_accuracy"] <= 1
    adv = DEFENSES.get(name).adversarial
    assert math.isnan(m["train_adv_accuracy"]) != adv  # adversarial recipes log an adversarial batch accuracy
    assert (tmp_path / "log.csv").read_text().startswith("epoch,train_loss,train_acc,train_adv_acc,test_acc")


def _robust(model, small, eps, n=200):
    from robench.evaluation.robust_eval import robust_accuracy
    ecfg = OmegaConf.create({"attack": "pgd", "params": {"steps": 20}, "n_samples": n, "batch_size": 1000})
    budget = OmegaConf.create({"norm": "linf", "eps": eps, "max_queries": 10000, "targeted": False, "target": "random"})
    return robust_accuracy(model, small, ecfg, budget, 0, torch.device("cpu"))


@pytest.mark.slow
def test_adversarial_training_raises_robust_accuracy(splits):
    """small_cnn (width 16) on 2,000 embedded MNIST images, 3 epochs; PGD-20 at Linf 0.1 on 200 test
    images, through the oracle. Seed 0 gives natural 49% robust (90.5% clean), PGD-AT 78% and TRADES
    80% robust (91% clean); about 25 s on a quiet 2-core machine."""
    torch.set_num_threads(1)
    small = subset(splits, 2000, 200)
    res = {}
    for name, params in (("none", {}), ("pgd_at", {"eps": 0.1, "steps": 3, "warmup_epochs": 0.5}),
                         ("trades", {"eps": 0.1, "steps": 3, "beta": 6.0, "warmup_epochs": 0.5})):
        torch.manual_seed(0)
        model = build_model("small_cnn", small, {"depth": 2, "width": 16})
        train(model, DEFENSES.get(name)(**params), small, tcfg(epochs=3, batch_size=50, lr=3e-3), torch.device("cpu"),
              seed=0, progress=False)
        res[name] = _robust(model, small, 0.1)
    nat, at, tr = (res[k]["robust_accuracy"] for k in ("none", "pgd_at", "trades"))
    assert nat < 0.6, res
    assert at >= nat + 0.2 and tr >= nat + 0.2, res
    assert min(r["clean_accuracy"] for r in res.values()) >= 0.85, res


class ConstModel(nn.Module):
    """Predicts class `c` whatever the input (input gradient zero): attacks succeed exactly on y != c."""

    def __init__(self, c=3, k=10):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(k))
        with torch.no_grad():
            self.bias[c] = 5.0

    def forward(self, x):
        return self.bias.expand(len(x), -1) + 0.0 * x.flatten(1).sum(1, keepdim=True)


def test_cat_eps_grows_by_eta_resets_on_success_and_caps():
    from robench.defenses.cat import CAT
    torch.manual_seed(0)
    cat = CAT(eps_max=0.1, eta=0.03, steps=2)
    cat.setup(8, 10, torch.device("cpu"))
    x, y = torch.rand(8, 1, 28, 28), torch.tensor([3, 3, 3, 3, 0, 1, 2, 4])
    model, idx = ConstModel(c=3), torch.arange(8)
    expected = [0.03, 0.06, 0.09, 0.1, 0.1]  # y == 3: never fooled, eps_i += eta up to eps_max
    for e in expected:
        loss, _, _ = cat.batch_loss(model, x, y, idx)
        assert torch.isfinite(loss)
        assert torch.allclose(cat.eps_i[:4], torch.full((4,), e)), (cat.eps_i, e)
        assert (cat.eps_i[4:] == 0).all()  # fooled at eps_i + eta: reset to 0
    # per-example state: a batch touches only its own rows
    cat.batch_loss(model, x[:2], y[:2], torch.tensor([0, 1]))
    assert torch.allclose(cat.eps_i[:4], torch.full((4,), 0.1))
    # (4.4): rows are distributions, with weight 1 - c eps_i + c eps_i u_y >= 1 - c eps_i on the label
    cat2 = CAT(eps_max=8 / 255)
    cat2.setup(4, 10, torch.device("cpu"))
    assert cat2.eta == pytest.approx(0.005) and cat2.c == pytest.approx(10.0)  # the paper's values at its eps_max
    eps = torch.tensor([0.0, 0.01, 0.02, 8 / 255])
    soft = cat2.smoothed(torch.tensor([1, 2, 3, 4]), eps)
    assert torch.allclose(soft.sum(1), torch.ones(4))
    assert soft[0, 1] == 1.0 and (soft[torch.arange(4), torch.tensor([1, 2, 3, 4])] >= 1 - 10 * eps - 1e-6).all()
    # scale-free defaults: at eps_max 0.3 the paper's proportions (eps_max / eta, c * eps_max) are kept
    cat3 = CAT(eps_max=0.3)
    assert cat3.eps_max / cat3.eta == pytest.approx((8 / 255) / 0.005) and cat3.c * 0.3 == pytest.approx(80 / 255)


def test_sprout_beta_ascends_the_loss(splits):
    from robench.defenses.sprout import SPROUT
    torch.manual_seed(0)
    small = subset(splits, 64)
    model = build_model("small_cnn", small, {"depth": 1, "width": 8})
    x, y = small.train.tensors
    sp = SPROUT(sigma=0.0, mixup_a=0.0, beta_lr=5.0)  # no augmentation: only the Dirichlet label is random
    sp.setup(64, 10, torch.device("cpu"))
    with torch.no_grad():
        logp = torch.log_softmax(model(x), 1)

    def expected_loss(beta):  # E[y~] = conc / sum(conc): the loss is linear in y~
        conc = (1 - sp.alpha) * torch.nn.functional.one_hot(y, 10) + sp.alpha * beta
        return -((conc / conc.sum(1, keepdim=True)) * logp).sum(1).mean().item()

    b0 = sp.beta.detach().clone()
    assert ((b0 >= 0.5) & (b0 <= 1.5)).all()
    l0 = expected_loss(b0)
    for _ in range(30):
        loss, _ = sp.batch_loss(model, x, y, torch.arange(64))
        loss.backward()
        model.zero_grad()
        sp.after_step()
    b1 = sp.beta.detach()
    assert expected_loss(b1) > l0 + 1e-4, (l0, expected_loss(b1))
    assert (b1 >= sp.beta_min).all()
    # β grows most where the model puts least probability (the adversarial direction of (5.8))
    grow = b1 - b0
    worst = (-logp).mean(0)
    assert grow[worst.argmax()] > grow[worst.argmin()]
    # the label formula is (5.6): its mean is ((1 - α) y + α β) / sum
    sp2 = SPROUT(alpha=0.3, concentration=50.0)
    sp2.setup(1, 10, torch.device("cpu"))
    ym = torch.nn.functional.one_hot(torch.zeros(4000, dtype=torch.long), 10).float()
    draws = torch.distributions.Dirichlet(sp2.concentration_of(ym)).sample()
    c = 0.7 * ym[0] + 0.3 * sp2.beta.detach()
    assert torch.allclose(draws.mean(0), c / c.sum(), atol=0.01)


class Interrupting:
    """Wraps a recipe and raises KeyboardInterrupt at the first batch of epoch `at`."""

    def __init__(self, inner, at):
        self.inner, self.at = inner, at

    def __getattr__(self, k):
        return getattr(self.inner, k)

    def __setattr__(self, k, v):
        if k in ("inner", "at"):
            object.__setattr__(self, k, v)
        else:
            setattr(self.inner, k, v)

    def batch_loss(self, model, x, y, i):
        if self.inner.epoch >= self.at:
            raise KeyboardInterrupt
        return self.inner.batch_loss(model, x, y, i)


def test_resume_after_interruption_matches_an_uninterrupted_run(splits, tmp_path):
    from robench.defenses.cat import CAT
    small = subset(splits, 96, 32)
    cfg = tcfg(epochs=3, schedule="cosine")

    def run(recipe, state):
        torch.manual_seed(0)
        model = build_model("small_cnn", small, {"depth": 1, "width": 8})
        m = train(model, recipe, small, cfg, torch.device("cpu"), seed=0, progress=False, state_path=state,
                  fingerprint="fp", log_path=tmp_path / "log.csv")
        return model, m

    ref_recipe = CAT(eps_max=0.3, steps=2)
    ref, mref = run(ref_recipe, None)
    state = tmp_path / "x.pt.resume"
    with pytest.raises(KeyboardInterrupt):
        run(Interrupting(CAT(eps_max=0.3, steps=2), at=2), state)
    assert state.exists()
    resumed_recipe = CAT(eps_max=0.3, steps=2)
    model, m = run(resumed_recipe, state)
    assert m["resumed_from_epoch"] == 2 and len(m["history"]) == 3
    for a, b in zip(ref.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(ref_recipe.eps_i, resumed_recipe.eps_i)
    assert [r["train_loss"] for r in m["history"]] == [r["train_loss"] for r in mref["history"]]
    # another configuration (fingerprint) does not resume from it
    torch.manual_seed(0)
    other = build_model("small_cnn", small, {"depth": 1, "width": 8})
    m2 = train(other, CAT(eps_max=0.3, steps=2), small, cfg, torch.device("cpu"), seed=0, progress=False,
               state_path=state, fingerprint="other")
    assert m2["resumed_from_epoch"] == 0
