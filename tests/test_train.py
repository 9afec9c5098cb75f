import torch
from omegaconf import OmegaConf

from robench.defenses.natural import Natural
from robench.errors import RobenchError
from robench.models import build_model
from robench.train import accuracy, make_schedule, train


def test_default_natural_training_reaches_97_percent(victim, splits):
    """The shipped defaults: cw_mnist on the embedded MNIST reaches >= 97% test accuracy in < 3 min on CPU."""
    m = victim.metrics
    assert m["clean_accuracy"] >= 0.97, m["clean_accuracy"]
    assert m["seconds"] < 180
    assert accuracy(victim, splits.test) == m["clean_accuracy"]  # the reported number is the model's
    assert [r["epoch"] for r in m["history"]] == list(range(1, m["epochs"] + 1))


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
