"""Ready for the GPU without a GPU (issue 27 item 4): every registered attack, input defense, detector and
training recipe runs under the simulated second device of robench/device_check.py (the batch, the victim
and everything made with ``device=`` on the "device"; factory calls without a device, ``.cpu()`` results,
``torch.Generator()`` and the engine's CPU slice on the "host") and no host tensor or generator meets the
batch. The lists are the registry's: a new plugin is covered without editing this file. Deliberately broken
attacks at the bottom show the check fails where a GPU run would, and passes deliberate host bookkeeping."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from robench.attacks.base import Attack
from robench.defenses.compose import DefendedModel, _kind, defense_spec, instantiate_input
from robench.device_check import HostDataset, mark_host, virtual_device
from robench.registry import ATTACKS, DEFENSES, instantiate
from robench.testing import check_devices, contract_params, device_problems, tiny_signal_victim, tiny_victim


@pytest.fixture(scope="module")
def tiny():
    return tiny_victim(n_test=2)


@pytest.fixture(scope="module")
def signal():
    return tiny_signal_victim(n_test=2, classes=4)  # 4 classes: the DLR loss needs them


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_is_ready_for_a_gpu(name, tiny, signal):
    model, x, y, train = tiny
    check_devices(lambda: instantiate(ATTACKS, name, contract_params(name), "attack"), model, x, y, train=train,
                  signal=signal)


def _shipped(name: str):
    """The defense's shipped configuration (configs/defense/<name>.yaml, interpolations resolved)."""
    from robench.api import _compose

    return defense_spec(_compose([f"defense={name}"]).defense)


@pytest.mark.parametrize("name", [n for n in DEFENSES.names() if _kind(n) == "input"])
def test_input_defense_is_ready_for_a_gpu(name, tiny):
    """The transformation in front of the victim: its forward on every query, its BPDA backward on gradient
    queries with EOT (a randomized one draws from its own generator on the batch's device)."""
    from robench.defenses.base import reseed_defenses, set_bpda

    model, x, y, _ = tiny
    (n, params), = _shipped(name).inputs
    victim = DefendedModel(model, [instantiate_input(n, params)]).eval()
    reseed_defenses(victim, 0)
    set_bpda(victim, True)
    for attack, access in (("pgd", "gradient"), ("square", "scores")):
        make = lambda: instantiate(ATTACKS, attack, {**contract_params(attack), **({"steps": 3} if attack == "pgd" else {})},
                                   "attack")
        problems = device_problems(make, victim, x, y, max_queries=8, eot_samples=2)
        assert not problems, f"{name} under {attack}: a GPU run would fail here:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", [n for n in DEFENSES.names() if _kind(n) == "detector"])
def test_detector_is_ready_for_a_gpu(name, tiny):
    """A detector calibrates on clean host images and scores points against the victim on its device."""
    import copy

    from robench.defenses.base import TrainContext

    model, x, _, _ = tiny
    spec = _shipped(name)
    det = instantiate(DEFENSES, spec.detector[0], {**spec.detector[1], "calibration_samples": 4}, "defense")
    needs = getattr(det, "needs_recipe", None)  # a detector that reads a recipe's networks in the victim (magnet_detect)
    if needs:
        recipe = instantiate(DEFENSES, needs, _shipped(needs).recipe_params, "defense")
        recipe.bind(TrainContext(splits=SimpleNamespace(shape=tuple(x.shape[1:]))))
        model = recipe.prepare_model(copy.deepcopy(model)).eval()
    with virtual_device() as vd:
        det.calibrate(model, mark_host(x.clone()))
        det.scores(model, mark_host(x.clone()))
    assert not vd.problems, "\n".join(vd.problems)


@pytest.mark.parametrize("name", [n for n in DEFENSES.names() if _kind(n) == "train"])
def test_training_recipe_is_ready_for_a_gpu(name, splits, tmp_path):
    """One epoch of the shared loop on 64 host images (batches of 32) with the recipe's shipped parameters."""
    from omegaconf import OmegaConf
    from torch.utils.data import TensorDataset

    from robench.data.base import DatasetSplits
    from robench.defenses.base import TrainContext
    from robench.models import build_model
    from robench.training.loop import train

    def host(ds, n):
        xs, ys = zip(*(ds[i][:2] for i in range(n)))
        return TensorDataset(mark_host(torch.stack(xs).float()), mark_host(torch.as_tensor(ys)))

    small = DatasetSplits(splits.name, host(splits.train, 64), host(splits.test, 32), splits.num_classes, splits.shape,
                          splits.mean, splits.std)
    arch = lambda: build_model("small_cnn_bn", small, {"depth": 1, "width": 8})  # noqa: E731 (BN: every recipe takes it)
    spec = _shipped(name)
    torch.manual_seed(0)
    recipe = instantiate(DEFENSES, spec.recipe, spec.recipe_params, "defense")
    recipe.bind(TrainContext(splits=small, device=torch.device("cpu"), load_model=lambda d: arch()))
    tcfg = OmegaConf.create({"epochs": 1, "batch_size": 32, "optimizer": "adam", "lr": 1e-3, "schedule": "none"})
    model = recipe.prepare_model(arch())
    with virtual_device() as vd:
        train(model, recipe, small, tcfg, torch.device("cpu"), seed=0, progress=False)
    assert not vd.problems, "a GPU run would fail here:\n" + "\n".join(vd.problems)


def test_evaluate_is_ready_for_a_gpu(tiny, tmp_path):
    """The Python API end to end (slice checks, engine, guard, records, mid-batch flushing, run folder)."""
    import robench

    model, x, y, _ = tiny
    with virtual_device() as vd:
        res = robench.evaluate(model, x, y, attack="square", budget=robench.Budget("linf", 0.3, max_queries=30),
                               run_dir=tmp_path / "run", device=torch.device("cpu"))
    assert not vd.problems, "\n".join(vd.problems)
    assert len(res.records) == len(y)


# ---------------------------------------------------------------------- broken attacks the check catches
class MadeOnTheHost(Attack):
    """A tensor made without device= and added to the batch: on a GPU, 'Expected all tensors to be on the same device'."""
    access = "label"

    def run(self, oracle, generator):
        x0 = oracle.x0
        noise = torch.zeros(x0.shape).uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(0))
        oracle.labels((x0 + noise).clamp(0, 1))


class DrawsOnTheHost(Attack):
    """The batch's generator used for a draw without device=: on a GPU, a CUDA generator for a CPU tensor."""
    access = "label"

    def run(self, oracle, generator):
        u = torch.rand(oracle.x0.shape, generator=generator)
        oracle.labels(u.to(oracle.device))


class HostGenerator(Attack):
    """A generator made without a device, drawing on the batch's device."""
    access = "label"

    def run(self, oracle, generator):
        g = torch.Generator().manual_seed(1)
        oracle.labels(torch.rand(oracle.x0.shape, generator=g, device=oracle.device))


class BackFromTheHost(Attack):
    """A ``.cpu()`` result mixed back into the batch."""
    access = "label"

    def run(self, oracle, generator):
        x0 = oracle.x0
        best = oracle.best_dist.cpu()
        oracle.labels(torch.where(torch.isfinite(best)[:, None, None, None], x0, 1 - x0))


@pytest.mark.parametrize("broken,match", [(MadeOnTheHost, "torch.zeros without device="),
                                          (DrawsOnTheHost, "generator on the batch's device"),
                                          (HostGenerator, "host generator"), (BackFromTheHost, r"\.cpu\(\)")])
def test_the_check_catches_a_host_tensor(monkeypatch, broken, match, tiny, signal):
    """Registered like a plugin, the broken attack is covered by the registry's list and fails the check."""
    monkeypatch.setitem(ATTACKS._items, "broken", broken)
    assert "broken" in ATTACKS.names()
    model, x, y, train = tiny
    with pytest.raises(AssertionError, match=match):
        check_devices(lambda: instantiate(ATTACKS, "broken", {}, "attack"), model, x, y, train=train, signal=signal)


class HostBookkeeping(Attack):
    """Deliberate host work a GPU run accepts: Python numbers, host index tensors into the batch, a 0-dim host
    scalar, ``.cpu()`` for a decision, a host generator for a host draw: no false alarm."""
    access = "label"

    def run(self, oracle, generator):
        x0 = oracle.x0
        k = int(torch.tensor([oracle.n, 1]).prod())                   # a Python number from a host tensor
        order = torch.randperm(k, generator=torch.Generator().manual_seed(0))  # host generator, host draw
        rows = x0[order]                                             # host index into the batch
        scale = torch.tensor(0.5)                                    # 0-dim host scalar
        if bool(oracle.active.cpu().any()):
            oracle.labels((rows * scale + x0 * (1 - scale)).clamp(0, 1), order.to(oracle.device))


def test_deliberate_host_bookkeeping_is_no_alarm(tiny, signal):
    model, x, y, train = tiny
    check_devices(HostBookkeeping, model, x, y, train=train, signal=signal)


def test_robench_attack_is_ready_for_a_gpu(splits, tmp_path):
    """``robench attack`` in process, everything made inside the check (the dataset read from its cache, the
    victim built, loaded from its checkpoint and moved to the device, an input defense in front, the engine,
    the records): the dataset's tensors are host tensors, as on a GPU machine."""
    from conftest import run_cli

    from robench.models import build_model
    from robench.models.checkpoint import checkpoint_path, save_checkpoint

    mcfg = {"name": "small_cnn", "params": {"depth": 1, "width": 8}}
    torch.manual_seed(0)
    save_checkpoint(checkpoint_path(str(tmp_path / "ckpt"), {"name": "mnist", "source": "embedded"}, mcfg, "none"),
                    build_model("small_cnn", splits, mcfg["params"]), {"model": "small_cnn", "dataset": "mnist"})
    with virtual_device() as vd:
        r = run_cli("attack", "attack=hsja", "model=small_cnn", "model.params.depth=1", "model.params.width=8",
                    "dataset.n_samples=4", "correct_only=false", "budget.max_queries=40", "budget.eps=null",
                    "defense=[none,random_resize_pad]", "device=cpu", f"checkpoint_dir={tmp_path / 'ckpt'}",
                    f"hydra.run.dir={tmp_path / 'run'}", "progress=false", "quiet=true")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not vd.problems, "a GPU run would fail here:\n" + "\n".join(vd.problems)
