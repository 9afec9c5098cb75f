"""Free AT [shafahi2019] and the batch-norm methods of [cheng2021 §6] (conditional-BN surgery,
bn_finetune, AdvProp, RobMask) on tiny models: each would fail if the method stopped working."""
import pytest
import torch
from torch import nn

from robench.models.checkpoint import load_checkpoint, save_checkpoint
from robench.errors import RobenchError
from robench.models import build_model
from robench.models.conditional_bn import (ConditionalBatchNorm, condition_bn, encode_eps, set_code, tell_eps)
from robench.registry import DEFENSES
from robench.training.loop import train
from test_recipes import _robust, subset, tcfg


def _bn_model(small, seed=0):
    torch.manual_seed(seed)
    return build_model("small_cnn_bn", small, {"depth": 2, "width": 8})


def test_free_at_buys_robustness_over_natural_training(splits):
    """small_cnn on 1,000 MNIST images, 2 epochs (free AT: 4 replays); PGD-20 at Linf 0.1 on 200 test
    images. Seed 0: natural 32.5% robust, free AT 66.5% (about 30 s on a loaded 2-core machine)."""
    torch.set_num_threads(1)
    small = subset(splits, 1000, 200)
    res = {}
    for name, params in (("none", {}), ("free_at", {"eps": 0.1, "replays": 4, "warmup_epochs": 0.5})):
        torch.manual_seed(0)
        model = build_model("small_cnn", small, {"depth": 2, "width": 16})
        train(model, DEFENSES.get(name)(**params), small, tcfg(epochs=2, batch_size=50, lr=3e-3), torch.device("cpu"),
              seed=0, progress=False)
        res[name] = _robust(model, small, 0.1)
    assert res["free_at"]["robust_accuracy"] >= res["none"]["robust_accuracy"] + 0.2, res
    assert res["free_at"]["clean_accuracy"] >= 0.85, res


def test_free_at_replays_each_batch_and_carries_delta(splits):
    small = subset(splits, 64, 32)
    model = build_model("small_cnn", small, {"depth": 1, "width": 8})
    rec = DEFENSES.get("free_at")(eps=0.2, replays=3)
    calls = []
    inner = rec.batch_loss
    rec.batch_loss = lambda m, x, y, i: (calls.append(len(x)), inner(m, x, y, i))[1]
    train(model, rec, small, tcfg(batch_size=32), torch.device("cpu"), seed=0, progress=False)
    assert calls == [32] * 6  # 2 batches x 3 replays, one optimizer step each
    assert rec.delta.abs().max() == pytest.approx(0.2)  # the perturbation ascends to the eps ball's surface and stays
    with pytest.raises(RobenchError):
        DEFENSES.get("free_at")(eps=0.3, replays=0)


def test_free_at_mnist_preset_is_the_measured_recipe():
    """experiment=free_at_mnist (README, "Free-AT at Linf 0.3") composes the measured departures for
    `robench train-defense`, the command line still wins, and the recipe it names constructs."""
    from omegaconf import OmegaConf

    cfg = _compose("experiment=free_at_mnist", config="run_train")
    assert _compose("experiment=free_at_mnist", "train.epochs=2", config="run_train").train.epochs == 2
    assert (cfg.model.name, cfg.budget.norm, cfg.budget.eps) == ("cw_mnist", "linf", 0.3)
    p = cfg.defense.params
    assert (cfg.defense.name, p.eps, p.replays, p.step_frac, p.random_init, p.warmup_epochs) == ("free_at", 0.4, 8, 0.3125, True, 1)
    assert (cfg.train.epochs, cfg.train.optimizer, cfg.train.lr, cfg.train.schedule) == (4, "sgd", 0.02, "cosine")
    rec = DEFENSES.get("free_at")(**OmegaConf.to_container(p, resolve=True))
    assert (rec.eps, rec.step_frac, rec.random_init) == (0.4, 0.3125, True)


def test_free_at_step_frac_and_random_init(splits):
    """step_frac scales the delta step (a fraction of eps); random_init replaces the carried delta by a
    uniform draw of the ball at each new minibatch's first replay, and only there."""
    small = subset(splits, 64, 32)

    def run(**kw):
        torch.manual_seed(0)
        model = build_model("small_cnn", small, {"depth": 1, "width": 8})
        rec = DEFENSES.get("free_at")(eps=0.2, replays=2, **kw)
        carried, used = [], []
        inner = rec.batch_loss

        def spy(m, x, y, i):
            carried.append(None if rec.delta is None else rec.delta[:len(x)].clone())
            out = inner(m, x, y, i)
            used.append(rec._leaf.detach().clone())
            return out
        rec.batch_loss = spy
        train(model, rec, small, tcfg(batch_size=32), torch.device("cpu"), seed=0, progress=False)
        return rec, carried, used  # 2 batches x 2 replays

    rec, carried, used = run(step_frac=0.25)  # from delta = 0, steps of 0.05 carried across the batches
    assert [round(float(u.abs().max()), 6) for u in used] == [0.0, 0.05, 0.1, 0.15]
    assert float(rec.delta.abs().max()) == pytest.approx(0.2)
    assert torch.equal(used[2], carried[2])
    rec, carried, used = run(step_frac=0.25, random_init=True)
    for r in (0, 2):  # each batch's first replay: a fresh draw of the ball, not the carried delta
        assert 0.15 < float(used[r].abs().max()) <= 0.2 + 1e-6
        assert float((used[r].abs() < 0.199).float().mean()) > 0.5  # uniform: mostly inside, not at the corners
    assert not torch.equal(used[2], carried[2])
    assert torch.equal(used[1], carried[1]) and torch.equal(used[3], carried[3])  # later replays carry it
    with pytest.raises(RobenchError):
        DEFENSES.get("free_at")(eps=0.3, step_frac=0)


@pytest.mark.parametrize("arch,shape", [("small_cnn_bn", (1, 28, 28)), ("resnet18", (3, 32, 32)),
                                        ("preact_resnet18", (3, 32, 32))])
def test_surgery_keeps_the_function_and_interpolates(arch, shape, splits):
    """Every BN becomes conditional; with all rows equal the model computes what it did; the code
    [p, 1 - p] gives gamma = p gamma_0 + (1 - p) gamma_1 (Table 6.2's interpolation)."""
    from types import SimpleNamespace
    torch.manual_seed(0)
    meta = SimpleNamespace(num_classes=10, shape=shape, mean=(0.5,) * shape[0], std=(0.5,) * shape[0], name="x")
    model = build_model(arch, meta, {}).eval()
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    x = torch.rand(2, *shape)
    with torch.no_grad():
        for m in model.modules():  # non-trivial statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        ref = model(x)
        condition_bn(model, k=2)
        layers = [m for m in model.modules() if isinstance(m, ConditionalBatchNorm)]
        assert len(layers) == n_bn > 0
        assert torch.allclose(model(x), ref, atol=1e-5)
        for m in layers:
            m.weight[1].mul_(0.5)
            m.bias[1].add_(0.1)
        set_code(model, torch.tensor([0.3, 0.7]))
        mixed = model(x)
        for m in layers:
            m.weight[0] = 0.3 * m.weight[0] + 0.7 * m.weight[1]
            m.bias[0] = 0.3 * m.bias[0] + 0.7 * m.bias[1]
        set_code(model, None)
        assert torch.allclose(model(x), mixed, atol=1e-5)


def test_surgery_errors_and_encoding(splits):
    with pytest.raises(RobenchError, match="no BatchNorm"):
        condition_bn(build_model("small_cnn", splits, {"depth": 1, "width": 8}))
    assert torch.allclose(encode_eps(6 / 255, 8 / 255), torch.tensor([0.25, 0.75]))  # [cheng2021 §6.3] footnote 1
    assert encode_eps(torch.tensor([0.0, 0.6]), 0.3).tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_checkpoint_reapplies_the_surgery(splits, tmp_path):
    small = subset(splits, 64, 32)
    model = _bn_model(small)
    rec = DEFENSES.get("robmask")(eps_max=0.3, steps=1)
    model = rec.prepare_model(model)
    train(model, rec, small, tcfg(), torch.device("cpu"), seed=0, progress=False)
    save_checkpoint(tmp_path / "m.pt", model, {"model": "small_cnn_bn"})
    from robench.victim import model_from_checkpoint

    torch.manual_seed(1)
    fresh, meta = model_from_checkpoint(None, {"name": "mnist"}, {"name": "small_cnn_bn", "params": {"depth": 2, "width": 8}},
                                        "robmask", small, path=tmp_path / "m.pt")  # the one loader applies the surgery
    assert meta["model_surgery"]["eval_eps"] == 0.3
    x = small.test.tensors[0][:8]
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), model.eval()(x), atol=1e-5)
        tell_eps(model, 0.0)
        assert not torch.allclose(model(x), fresh(x), atol=1e-4)  # the eps it is told changes the function


def test_bn_finetune_moves_only_the_finetuned_rescaling(splits):
    small = subset(splits, 96, 32)
    model = _bn_model(small)
    x = small.test.tensors[0][:8]
    with torch.no_grad():
        ref = model.eval()(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = DEFENSES.get("bn_finetune")(eps=0.3, steps=2)
    model = rec.prepare_model(model)
    train(model, rec, small, tcfg(lr=1e-2), torch.device("cpu"), seed=0, progress=False)
    after = model.state_dict()
    bn_names = {n for n, m in model.named_modules() if isinstance(m, ConditionalBatchNorm)}
    others = [k for k in before if k.rsplit(".", 1)[0] not in bn_names]
    assert others
    for k in others:
        assert torch.equal(after[k], before[k]), k  # convolutions, linear layers: untouched
    bn = [m for m in model.modules() if isinstance(m, ConditionalBatchNorm)]
    assert all(not torch.equal(m.weight[0], m.weight[1]) for m in bn)  # gamma' moved ...
    with torch.no_grad():
        set_code(model, torch.tensor([1.0, 0.0]))       # ... gamma did not, nor the statistics: p = 1 is the original
        assert torch.allclose(model.eval()(x), ref, atol=1e-5)


def test_robmask_and_advprop_train(splits):
    """RobMask draws a per-example eps (a (B, 2) code during training) and leaves the model told its
    eval eps; AdvProp's two branches keep separate statistics."""
    small = subset(splits, 96, 32)
    seen = []
    rm = DEFENSES.get("robmask")(eps_max=0.3, steps=1, eval_eps=0.1)
    model = rm.prepare_model(_bn_model(small))
    layer = next(m for m in model.modules() if isinstance(m, ConditionalBatchNorm))
    layer.register_forward_pre_hook(lambda m, inp: seen.append(None if m.code is None else tuple(m.code.shape)))
    train(model, rm, small, tcfg(), torch.device("cpu"), seed=0, progress=False)
    assert (32, 2) in seen
    assert torch.allclose(layer.code, torch.tensor([2 / 3, 1 / 3]))
    ap = DEFENSES.get("advprop")(eps=0.3, steps=1)
    model = ap.prepare_model(_bn_model(small))
    train(model, ap, small, tcfg(), torch.device("cpu"), seed=0, progress=False)
    layer = next(m for m in model.modules() if isinstance(m, ConditionalBatchNorm))
    assert not torch.allclose(layer.running_mean[0], layer.running_mean[1])


def test_invariance_and_landscape_commands(splits, tmp_path):
    """`robench landscape` / `robench invariance` on a small_cnn trained for one epoch: CSV + PNG;
    the loss climbs along the gradient-sign direction; a 10° rotation costs accuracy."""
    import csv

    from robench.models.checkpoint import checkpoint_path
    from robench.analysis import invariance_main, landscape_main
    from robench.defenses.natural import Natural

    small = subset(splits, 1000, 100)
    torch.manual_seed(0)
    model = build_model("small_cnn", small, {"depth": 2, "width": 32})
    train(model, Natural(), small, tcfg(epochs=1, lr=3e-3), torch.device("cpu"), seed=0, progress=False)
    path = checkpoint_path(str(tmp_path / "ck"), {"name": "mnist", "source": "embedded"},
                           {"name": "small_cnn", "params": {"depth": 2, "width": 32}}, "none")
    save_checkpoint(path, model, {"model": "small_cnn"})
    common = ["--defenses", "none", "--model", "small_cnn", "--checkpoint-dir", str(tmp_path / "ck")]
    landscape_main(common + ["--n", "40", "--grid", "3", "--eps", "0.2", "--out", str(tmp_path / "l")])
    rows = list(csv.DictReader(open(tmp_path / "l" / "landscape.csv")))
    assert len(rows) == 9 and (tmp_path / "l" / "landscape.png").stat().st_size > 10000
    loss = {(float(r["a_sign"]), float(r["b_rademacher"])): float(r["loss"]) for r in rows}
    assert loss[(0.2, 0.0)] > loss[(0.0, 0.0)] + 0.5, loss
    invariance_main(common + ["--n", "100", "--out", str(tmp_path / "i")])
    inv = list(csv.DictReader(open(tmp_path / "i" / "invariance.csv")))[0]
    assert float(inv["greyscale"]) == float(inv["clean"])  # MNIST is greyscale already
    assert float(inv["rotation_10"]) != float(inv["clean"]) or float(inv["contrast_2"]) != float(inv["clean"])
    assert (tmp_path / "i" / "invariance.png").exists()
    with pytest.raises(RobenchError, match="no checkpoint"):
        invariance_main(["--defenses", "pgd_at", "--model", "small_cnn", "--checkpoint-dir", str(tmp_path / "ck")])


def _compose(*overrides, config="run_attack"):
    from hydra import compose as hcompose, initialize_config_dir
    from robench.config import configs_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(configs_dir())):
        return hcompose(config, overrides=list(overrides), return_hydra_config=False)


def test_attack_time_mix_and_eps_reach_the_loaded_model(splits, tmp_path):
    """`robench attack` loads a conditional-BN checkpoint with the surgery re-applied and tells it
    defense.params.mix (bn_finetune, the Table 6.2 preset) or the budget's eps (robmask, Table 6.5)."""
    from robench.models.checkpoint import checkpoint_path
    from robench.models.conditional_bn import ConditionalBatchNorm
    from robench.victim import load_victim

    small = subset(splits, 64, 32)
    for name in ("bn_finetune", "robmask"):
        rec = DEFENSES.get(name)(**({"eps": 0.3, "steps": 1} if name == "bn_finetune" else {"eps_max": 0.3, "steps": 1}))
        torch.manual_seed(0)
        model = rec.prepare_model(build_model("small_cnn_bn", small, {"depth": 2, "width": 32}))
        train(model, rec, small, tcfg(lr=1e-2), torch.device("cpu"), seed=0, progress=False)
        save_checkpoint(checkpoint_path(str(tmp_path), {"name": "mnist", "source": "embedded"},
                                        {"name": "small_cnn_bn", "params": {"depth": 2, "width": 32}}, name), model, {})
    t62 = _compose("experiment=cheng_table6_2", "defense=bn_finetune", "defense.params.mix=0.4", f"checkpoint_dir={tmp_path}")
    m, meta = load_victim(t62, splits, torch.device("cpu"))
    assert meta["model_told"].startswith("mix p=0.4")
    assert all(torch.allclose(l.code, torch.tensor([0.4, 0.6])) for l in m.modules() if isinstance(l, ConditionalBatchNorm))
    t65 = _compose("experiment=cheng_table6_5", "defense=robmask", "budget.eps=0.1", f"checkpoint_dir={tmp_path}")
    m, meta = load_victim(t65, splits, torch.device("cpu"))
    assert meta["model_told"].startswith("eps 0.1")
    assert all(torch.allclose(l.code, torch.tensor([2 / 3, 1 / 3])) for l in m.modules() if isinstance(l, ConditionalBatchNorm))
    t61 = _compose("experiment=cheng_table6_1")
    assert t61.model.name == "small_cnn_bn"


def test_attack_at_eps_zero_accepts_a_recipe_whose_eps_follows_the_budget():
    """Table 6.5's eps = 0 column (clean accuracy): pgd_at's training eps defaults to budget.eps, and
    at attack time it plays no part, so budget.eps=0 must not trip the recipe's "eps > 0" check; a
    training run at eps 0 still fails in one line."""
    from robench.config import _defense

    for name in ("pgd_at", "advprop"):
        _defense({"name": name, "params": {"eps": 0.0}})
        with pytest.raises(RobenchError, match="eps must be a number > 0"):
            _defense({"name": name, "params": {"eps": 0.0}}, for_training=True)
        for bad in ("abc", False):  # not a number: still refused in one line at attack time
            with pytest.raises(RobenchError):
                _defense({"name": name, "params": {"eps": bad}})
