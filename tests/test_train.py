import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import ROOT

from robench.defenses.natural import Natural
from robench.errors import RobenchError
from robench.models import build_model
from robench.training.loop import accuracy, make_schedule, train


@pytest.mark.slow
def test_default_natural_training_reaches_97_percent(splits):
    """The shipped defaults (configs/run_train.yaml): cw_mnist on the embedded MNIST reaches >= 97% test
    accuracy in < 3 min on a CPU. (The rest of the suite attacks committed weights, tests/fixtures.)"""
    torch.manual_seed(0)
    model = build_model("cw_mnist", splits)
    tcfg = OmegaConf.load(ROOT / "configs" / "run_train.yaml").train
    m = train(model, Natural(), splits, tcfg, torch.device("cpu"), seed=0, progress=False)
    assert m["clean_accuracy"] >= 0.97, m["clean_accuracy"]
    assert m["seconds"] < 180
    assert accuracy(model, splits.test) == m["clean_accuracy"]  # the reported number is the model's
    assert [r["epoch"] for r in m["history"]] == list(range(1, m["epochs"] + 1))


def test_the_committed_victim_and_the_perturbation_switch(victim, splits):
    """The suite's victim is the committed one (>= 97% clean, as trained); ROBENCH_TEST_PERTURB changes
    every weight by about that relative amount and nothing else."""
    import copy

    from tests.conftest import PERTURB, fixture_victim, perturb

    assert accuracy(victim, splits.test) >= 0.97
    assert victim.metrics["trained_clean_accuracy"] >= 0.97
    a = copy.deepcopy(victim)
    b = perturb(copy.deepcopy(victim), rel=1e-5)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        nz = p != 0
        rel = ((q - p)[nz] / p[nz]).abs()
        assert 1e-7 < float(rel.mean()) < 1e-4, n  # changed, by about 1e-5
    unperturbed = fixture_victim(splits, rel=0)
    same = all(torch.equal(p, q) for p, q in zip(victim.parameters(), unperturbed.parameters()))
    assert same == (not PERTURB)  # the session victim is perturbed exactly when the switch is on


def test_training_is_seeded(splits):
    from torch.utils.data import TensorDataset

    small = type(splits)(splits.name, TensorDataset(*(t[:256] for t in splits.train.tensors)), splits.test,
                         10, splits.shape, splits.mean, splits.std)
    tcfg = OmegaConf.create({"epochs": 1, "batch_size": 64})
    ws = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_model("small_cnn", small, {"depth": 2, "width": 8})
        train(model, Natural(), small, tcfg, torch.device("cpu"), seed=5, progress=False)
        ws.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(ws[0], ws[1])


def test_bad_training_options():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    import pytest
    with pytest.raises(RobenchError, match="train.schedule"):
        make_schedule(opt, OmegaConf.create({"schedule": "wobbly"}), 10, 2)
    s = make_schedule(opt, OmegaConf.create({"schedule": "step", "milestones": [1], "gamma": 0.1}), 10, 2)
    for _ in range(10):
        opt.step()
        s.step()
    assert abs(opt.param_groups[0]["lr"] - 0.01) < 1e-9


def test_cyclic_schedule_rises_to_the_peak_then_falls_to_zero():
    """Wong et al.'s cyclic lr: linear from 0 to train.lr at cycle_peak of the steps, then linear to 0."""
    import pytest

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    s = make_schedule(opt, OmegaConf.create({"schedule": "cyclic", "cycle_peak": 0.4}), 5, 2)  # 10 steps
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    # step k runs at lambda(k + 1): 1/4, 2/4, 3/4, 1 of the peak, then down in sixths to 0
    want = [0.125, 0.25, 0.375, 0.5] + [0.5 * (10 - t) / 6 for t in range(5, 11)]
    assert max(abs(a - b) for a, b in zip(lrs, want)) < 1e-9, lrs
    with pytest.raises(RobenchError, match="cycle_peak"):
        make_schedule(opt, OmegaConf.create({"schedule": "cyclic", "cycle_peak": 1.5}), 5, 2)


def test_early_stop_keeps_the_previous_epochs_weights(splits):
    """A recipe that stops after epoch 2 ends with exactly the weights of a 1-epoch run (same seed), and
    the metrics say so; the log has only the kept epoch."""
    from torch.utils.data import TensorDataset

    class StopAtTwo(Natural):
        may_stop_early = True
        calls = []

        def end_of_epoch(self, model, splits, epoch):
            self.calls.append(epoch)
            return epoch == 2

    small = type(splits)(splits.name, TensorDataset(*(t[:256] for t in splits.train.tensors)), splits.test,
                         10, splits.shape, splits.mean, splits.std)
    ws, ms = [], []
    for recipe, epochs in ((Natural(), 1), (StopAtTwo(), 3)):
        torch.manual_seed(123)
        model = build_model("small_cnn", small, {"depth": 2, "width": 8})
        ms.append(train(model, recipe, small, OmegaConf.create({"epochs": epochs, "batch_size": 64, "schedule": "none"}),
                        torch.device("cpu"), seed=5, progress=False))
        ws.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(ws[0], ws[1])
    assert StopAtTwo.calls == [1, 2]
    assert ms[1]["epochs"] == 1 and ms[1]["early_stopped_at_epoch"] == 1 and ms[0]["early_stopped_at_epoch"] is None
    assert [r["epoch"] for r in ms[1]["history"]] == [1]
    assert ms[1]["clean_accuracy"] == ms[0]["clean_accuracy"]


def test_fast_at_early_stop_rule(victim, splits, monkeypatch):
    """FastAT stops when the check's robust accuracy falls by more than stop_drop (0.2) since the last kept
    epoch; the check itself is PGD-5 at the full eps (a naturally trained victim has almost none)."""
    from robench.defenses.fast_at import FastAT

    r = FastAT(eps=0.3, check_size=200)
    assert r.check_robust(victim, splits) < 0.1
    seq = iter([0.50, 0.45, 0.31, 0.60])
    monkeypatch.setattr(r, "check_robust", lambda model, splits: next(seq))
    assert [r.end_of_epoch(victim, splits, e) for e in (1, 2, 3)] == [False, False, False]  # 0.45 -> 0.31: 0.14
    assert r.prev_robust == 0.31
    r.load_state_dict({"prev_robust": 0.85})  # resumed: the drop is measured from 0.85
    assert r.end_of_epoch(victim, splits, 4) is True and r.prev_robust == 0.85
