"""The Python API (robench/api.py): same records as the CLI, the README's example, errors, run folders."""
from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

import robench
from robench.evaluation import results as R
from tests.conftest import ROOT, run_cli

TIME_COLUMNS = ("seconds", "batch_seconds")


def _same_records(a: pd.DataFrame, b: pd.DataFrame):
    a, b = a.drop(columns=list(TIME_COLUMNS)), b.drop(columns=list(TIME_COLUMNS))
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True, check_dtype=False)


CLI_ATTACKS, N, MAX_Q = ("pgd", "square", "signopt"), 10, 80


@pytest.fixture(scope="module")
def cli_runs(ckpt_dir, tmp_path_factory):
    """One `robench attack -m` sweep over the three attacks (one process start), shared by the comparisons."""
    d = tmp_path_factory.mktemp("cli")
    p = run_cli("attack", "-m", f"attack={','.join(CLI_ATTACKS)}", f"dataset.n_samples={N}", f"budget.max_queries={MAX_Q}",
                "attack.batch_size=4", "seed=3", "progress=false", "quiet=true", f"checkpoint_dir={ckpt_dir}",
                f"hydra.sweep.dir={d}", "hydra.sweep.subdir=${attack.name}", cwd=d)
    assert p.returncode == 0, p.stderr
    return d


@pytest.mark.parametrize("attack", CLI_ATTACKS)
def test_evaluate_gives_the_cli_records(attack, cli_runs, ckpt_dir, tmp_path):
    """robench.evaluate on the default checkpoint == robench attack with the same config and seed."""
    cli = pd.DataFrame(R.read_records(cli_runs / attack / "records.csv"))
    victim = robench.load_victim("mnist", "cw_mnist", "none", checkpoint_dir=ckpt_dir)
    x, y = robench.load_data("mnist", N)
    budget = robench.Budget("linf", 0.3, max_queries=MAX_Q)
    res = robench.evaluate(victim, x, y, attack=attack, budget=budget, seed=3, batch_size=4, run_dir=tmp_path / "api")
    _same_records(cli, res.records)  # in memory
    _same_records(cli, pd.DataFrame(R.read_records(tmp_path / "api" / "records.csv")))  # and in the run folder
    assert res.summary["n_success"] == int(cli.success.sum())
    assert res.summary["access"] == robench.registry.ATTACKS.get(attack).access
    assert res.adversarial.shape == x.shape
    again = robench.evaluate(victim, x, y, attack=attack, budget=budget, seed=3, batch_size=4, run_dir=tmp_path / "api")
    assert again.summary["finished"] == res.summary["finished"]  # complete: read back, not re-run


def readme_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs():
    ns: dict = {}
    exec(compile(readme_python_block(), "README.md", "exec"), ns)
    pgd, square = ns["pgd"], ns["square"]
    for res in (pgd, square):
        assert set(R.RECORD_COLUMNS) <= set(res.records.columns) and len(res.records) == len(ns["y"])
        assert res.summary["schema_version"] == R.SCHEMA_VERSION
        assert res.adversarial.min() >= 0 and res.adversarial.max() <= 1
    assert pgd.summary["access"] == "gradient" and square.summary["access"] == "scores"
    assert pgd.summary["n_attacked"] > 0


def test_errors_are_one_line_robench_errors(victim):
    x = torch.rand(4, 1, 28, 28)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(robench.RobenchError, match="budget.norm must be one of"):  # refused when the budget is made
        robench.Budget("l3", 0.3)
    cases = [(dict(x=x * 2), "must lie in \\[0, 1\\]"), (dict(attack="nope"), "unknown attack 'nope'"),
             (dict(attack="pgd", stepz=3), "pgd"), (dict(batch_size=0), "batch_size must be an integer >= 1")]
    for over, match in cases:
        kw = {"x": x, "attack": "pgd", **over}
        with pytest.raises(robench.RobenchError, match=match) as e:
            robench.evaluate(victim, kw.pop("x"), y, **kw)
        assert "\n" not in str(e.value)


def test_normalization_targets_iterables_and_preflight(victim, test_xy):
    x, y = test_xy[0][:6], test_xy[1][:6]
    mean, std = torch.tensor([0.5]), torch.tensor([0.25])

    class ExpectsNormalized(torch.nn.Module):
        def forward(self, z):
            return victim(z * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1))

    b = robench.Budget("linf", 0.3, max_queries=50)
    plain = robench.evaluate(victim, x, y, attack="pgd", budget=b, steps=5)
    wrapped = robench.evaluate(ExpectsNormalized(), x, y, attack="pgd", budget=b, steps=5, mean=mean.tolist(), std=std.tolist())
    assert wrapped.records.success.tolist() == plain.records.success.tolist()
    loader = [(x[:4], y[:4]), (x[4:], y[4:])]
    assert robench.evaluate(victim, loader, attack="pgd", budget=b, steps=5).records.success.tolist() == plain.records.success.tolist()
    t = (y + 1) % 10
    tr = robench.evaluate(victim, x, y, attack="pgd", budget=b, targets=t, steps=5)
    assert tr.records.target.tolist() == t.tolist() and tr.summary["targeted"]
    probs = torch.nn.Sequential(victim, torch.nn.Softmax(1))
    with pytest.warns(UserWarning, match="look like probabilities"):
        res = robench.evaluate(probs, x, y, attack="fgsm", budget=b)
    assert res.preflight["probabilities"] and not res.preflight["randomized"]


def test_preflight_measures_randomness(victim, test_xy):
    """A victim that draws noise without declaring it is found randomized: 3-fold re-check."""
    class Noisy(torch.nn.Module):
        def forward(self, z):
            return victim((z + 0.05 * torch.randn_like(z)).clamp(0, 1))

    x, y = test_xy[0][:4], test_xy[1][:4]
    res = robench.evaluate(Noisy(), x, y, attack="fgsm", budget=robench.Budget("linf", 0.3, max_queries=5))
    assert res.preflight["randomized"] and res.summary["recheck_repeats"] == 3
    det = robench.evaluate(victim, x, y, attack="fgsm", budget=robench.Budget("linf", 0.3, max_queries=5))
    assert not det.preflight["randomized"] and det.summary["recheck_repeats"] == 1


def test_api_and_cli_agree_by_default(ckpt_dir, tmp_path):
    """No batch-size argument: robench.evaluate takes the attack's configured batch size (Square: 50), as
    `robench attack attack=square` does, so the same seed gives the same records."""
    p = run_cli("attack", "attack=square", "dataset.n_samples=60", "budget.max_queries=20", "progress=false",
                "quiet=true", f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={tmp_path / 'cli'}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    cli = pd.DataFrame(R.read_records(tmp_path / "cli" / "records.csv"))
    victim = robench.load_victim("mnist", "cw_mnist", "none", checkpoint_dir=ckpt_dir)
    x, y = robench.load_data("mnist", 60)
    res = robench.evaluate(victim, x, y, attack="square", budget=robench.Budget("linf", 0.3, max_queries=20), seed=0)
    assert res.summary["batch_size"] == 50 and cli.batch.max() == 1
    _same_records(cli, res.records)


def test_saved_adversarial_examples_match_the_records(victim, test_xy, tmp_path):
    """run_dir= saves each batch's examples (npz, read back without pickle); every saved point agrees with
    its record: success, distortion recomputed from the stored point, and the victim's label of it."""
    from robench.geometry import distortion

    x, y = test_xy[0][:12], test_xy[1][:12]
    res = robench.evaluate(victim, x, y, attack="pgd", budget=robench.Budget("linf", 0.1), steps=5, batch_size=5,
                           run_dir=tmp_path / "run", save_adversarial=["npz", "png"])
    adv = robench.load_adversarial(tmp_path / "run")
    rec = res.records.sort_values("index").reset_index(drop=True)
    assert len(adv) == len(rec) == 12 and adv.index.tolist() == rec["index"].tolist()
    assert adv.success.tolist() == rec.success.astype(bool).tolist()
    assert torch.equal(adv.x0, x) and adv.x.min() >= 0 and adv.x.max() <= 1
    d = distortion(adv.x - adv.x0, "linf")
    for k in range(len(rec)):
        if rec.success[k]:
            assert abs(float(d[k]) - rec.linf[k]) < 1e-6 and float(d[k]) <= 0.1 + 1e-5
            assert int(adv.pred[k]) != int(adv.label[k])
    with torch.no_grad():
        assert torch.equal(victim(adv.x).argmax(1), adv.pred)
    assert len(list((tmp_path / "run" / "adversarial" / "png").glob("*.png"))) == 12
    with pytest.raises(robench.RobenchError, match="no saved adversarial examples"):
        robench.load_adversarial(tmp_path)


def test_victim_speed_options(victim, test_xy, tmp_path):
    """victim_speed (docs/gpu.md, "A faster victim"): channels_last puts the 4-d weights in channels-last
    format and attacks run on it with the referee's counts as always; bad settings are one-line refusals,
    in the API and on the command line, before anything is written."""
    import copy

    from robench.errors import RobenchError

    x, y = test_xy
    x, y = x[:8], y[:8]
    fast = copy.deepcopy(victim)
    res = robench.evaluate(fast, x, y, attack="square", budget=robench.Budget("linf", 0.3, max_queries=40),
                           victim_speed={"channels_last": True}, batch_size=8)
    conv = [p for p in fast.parameters() if p.dim() == 4]
    assert conv and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv)
    assert any(not p.is_contiguous() for p in conv)  # (a 1-channel kernel is both)
    with torch.no_grad():  # the same network: its decisions on the clean images are the plain model's
        assert torch.equal(fast(x).argmax(1), victim(x).argmax(1))
    assert int(res.records["queries"].max()) <= 40 and len(res.records) == 8
    for bad, msg in (({"channel_last": True}, "victim_speed.channel_last is not a setting"),
                     ({"compile": "yes"}, "victim_speed.compile")):
        with pytest.raises(RobenchError, match=msg):
            robench.evaluate(victim, x, y, attack="square", victim_speed=bad, run_dir=tmp_path / "r")
        assert not (tmp_path / "r").exists()
    r = run_cli("attack", "victim_speed.compile=maybe", "dataset.n_samples=4", f"hydra.run.dir={tmp_path / 'c'}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "victim_speed.compile" in r.stderr
    assert not (tmp_path / "c").exists()
