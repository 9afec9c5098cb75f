"""model=gbdt: LightGBM trees as a non-differentiable victim ([cheng2021 §2.5.0.5, Table 2.1]).

A tiny booster (600 embedded training images, 20 rounds of 8 leaves, 16 bins: about 2 s) is trained,
saved in robench's checkpoint (LightGBM's text format in a uint8 tensor, loadable with
weights_only=True) and reloaded; OPT-attack fools it within 300 counted label queries where random
noise of the same L2 does not; gradient attacks are refused in one line before any work.
"""
import dataclasses

import pytest
import torch

pytest.importorskip("lightgbm")

from robench.attacks.decision.opt import OPTAttack  # noqa: E402
from robench.models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from robench.errors import RobenchError  # noqa: E402
from robench.models import build_model  # noqa: E402
from robench.models.gbdt import fit  # noqa: E402
from robench.geometry import distortion  # noqa: E402
from robench.referee.oracle import Oracle  # noqa: E402
from tests.test_decision import Recorder  # noqa: E402

TINY = {"num_trees": 20, "num_leaves": 8, "min_data_in_leaf": 5, "max_bin": 16}


@pytest.fixture(scope="module")
def tiny(splits):
    from torch.utils.data import DataLoader, TensorDataset

    x, y = next(iter(DataLoader(splits.train, batch_size=600)))
    xt, yt = next(iter(DataLoader(splits.test, batch_size=200)))
    sub = dataclasses.replace(splits, train=TensorDataset(x, y), test=TensorDataset(xt, yt))
    model = build_model("gbdt", sub, TINY)
    metrics = fit(model, sub, seed=0)
    return model, metrics, xt, yt


def test_trains_saves_as_lightgbm_text_and_reloads(tiny, splits, tmp_path):
    model, m, xt, yt = tiny
    assert m["train_accuracy"] > 0.95 and m["clean_accuracy"] > 0.7, m  # a random model scores ~0.1
    with torch.no_grad():
        out = model(xt)
    assert out.shape == (200, 10) and not out.requires_grad and out.grad_fn is None
    assert float((out.argmax(1) == yt).float().mean()) == pytest.approx(m["clean_accuracy"])
    path = tmp_path / "none.pt"
    save_checkpoint(path, model, {"model": "gbdt"})
    blob = torch.load(path, map_location="cpu", weights_only=True)  # no pickle of a Booster anywhere
    text = bytes(blob["state_dict"]["net.booster"].numpy()).decode()
    assert text.startswith("tree\nversion=") and "num_class=10" in text
    fresh = build_model("gbdt", splits, TINY)
    with pytest.raises(RobenchError, match="not trained"):
        fresh(xt[:1])
    load_checkpoint(path, fresh)
    assert torch.equal(fresh(xt), out)
    with pytest.raises(RobenchError, match="defense=none only"):
        fit(build_model("gbdt", splits, TINY), splits, seed=0, recipe="pgd_at")


def test_opt_attack_fools_it_where_noise_of_the_same_l2_does_not(tiny):
    model, _, xt, yt = tiny
    with torch.no_grad():
        ok = (model(xt).argmax(1) == yt).nonzero().flatten()[:3]
    x0, y = xt[ok], yt[ok]
    rec = Recorder(model, x0, y, "l2")
    o = rec.spy(Oracle(rec, x0, y, access="label", norm="l2", eps=None, max_queries=300, stop_on_success=False,
                       num_classes=10, checkpoints=[150, 300]))
    OPTAttack(n_init=20).run(o, torch.Generator().manual_seed(0))
    rec.enabled = False
    r = o.finalize()
    assert torch.equal(r.queries, rec.count) and int(r.queries.max()) == 300  # every query counted, none past the budget
    assert r.success.all()
    with torch.no_grad():
        assert (model(r.best_x).argmax(1) != y).all()
    d = distortion(r.best_x - x0, "l2")
    start = torch.tensor([rec.adv[i][0][1] for i in range(3)])
    assert (d < start).all() and (r.dist_at[:, 0] >= r.dist_at[:, 1]).all()
    # random directions of the attack's own L2 (then clipped to [0, 1], so no larger): 50 per image
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(50, *x0.shape, generator=g)
    noise = noise / noise.flatten(2).norm(dim=2).view(50, 3, 1, 1, 1) * d.view(1, 3, 1, 1, 1)
    xn = (x0.unsqueeze(0) + noise).clamp(0, 1).flatten(0, 1)
    with torch.no_grad():
        fooled = (model(xn).argmax(1) != y.repeat(50)).float().mean()
    assert fooled < 0.1, float(fooled)


def test_gradient_attacks_are_refused_in_one_line(tiny, tmp_path, capsys):
    import robench
    from robench import cli

    model, _, xt, yt = tiny
    with pytest.raises(RobenchError, match="no gradients: attack=|no gradients: a gradient attack"):
        robench.evaluate(model, xt[:4], yt[:4], attack="pgd", budget=robench.Budget(norm="linf", eps=0.3))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # before the checkpoint is even looked for, and before the run folder
        cli.main(["attack", "model=gbdt", "attack=fgsm", f"checkpoint_dir={tmp_path}/ck",
                  f"hydra.run.dir={tmp_path}/run", "progress=false"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert e.value.code == 2 and len(lines) == 1, lines
    assert "LightGBM tree ensemble and has no gradients: attack=fgsm needs input gradients" in lines[0]
    assert "use a score- or label-based attack" in lines[0]
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as e:
        cli.main(["train-defense", "model=gbdt", "defense=pgd_at", f"checkpoint_dir={tmp_path}/ck",
                  f"hydra.run.dir={tmp_path}/train", "progress=false"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert e.value.code == 2 and len(lines) == 1 and "defense=pgd_at trains through the model's gradients" in lines[0]
    assert not (tmp_path / "train").exists()
    with pytest.raises(SystemExit) as e:  # the landscape's first axis is the gradient sign
        cli.main(["landscape", "--model", "gbdt", "--defenses", "none", "--checkpoint-dir", f"{tmp_path}/ck",
                  "--out", f"{tmp_path}/land"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert e.value.code == 2 and len(lines) == 1 and "robench landscape needs the loss gradient" in lines[0], lines
    assert not (tmp_path / "land").exists()
