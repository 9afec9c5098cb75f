"""Issue 25: no wrong number from any input, nothing written by a refused run, one error type from the API.

* every non-finite input (NaN images, NaN logits, a std of 0, labels outside the model's classes) is
  refused in one line (CLI exit 2, API RobenchError) and never gives a number;
* a run refused at any stage (validation, data loading, the victim probe, the attack's construction)
  leaves every folder byte-identical, and the corrected command then runs into the same folder;
* a victim that starts returning NaN mid-run stops the run in one line, keeping the records of the
  batches it completed;
* ``model.target`` names a class or a Python function that builds an ``nn.Module``: builtins and the
  standard library are refused before anything is called.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

import robench
from robench.errors import RobenchError
from tests.conftest import run_cli
from tests.test_reliability import snapshot
from tests.test_sources import USER_NET, exported  # noqa: F401  (fixture)

NAN_NETS = textwrap.dedent("""
    import torch
    import torch.nn as nn

    class NaNNet(nn.Module):
        '''Returns NaN logits.'''
        def forward(self, x):
            return torch.full((x.shape[0], 10), float("nan"))

    class FiveNet(nn.Module):
        '''Five logits for a ten-class dataset.'''
        def forward(self, x):
            return x.flatten(1)[:, :5]

    class Raising(nn.Module):
        def forward(self, x):
            raise ValueError("my model is broken")
    """)


@pytest.fixture(scope="module")
def files(tmp_path_factory, exported, ckpt_dir, splits):  # noqa: F811
    d = tmp_path_factory.mktemp("trustfiles")
    (d / "nets.py").write_text(NAN_NETS)
    real = next(Path(ckpt_dir).rglob("none.pt"))
    (d / "trunc_ck" / real.relative_to(ckpt_dir).parent).mkdir(parents=True)
    (d / "trunc_ck" / real.relative_to(ckpt_dir)).write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    (d / "junk_ck" / real.relative_to(ckpt_dir).parent).mkdir(parents=True)
    (d / "junk_ck" / real.relative_to(ckpt_dir)).write_bytes(b"not a checkpoint at all" * 100)
    w = exported["module"].read_bytes()
    (d / "trunc_weights.pt").write_bytes(w[: len(w) // 3])
    (d / "junk_weights.pt").write_bytes(b"\x00garbage" * 64)
    ts = exported["torchscript"].read_bytes()
    (d / "trunc.ts").write_bytes(ts[: len(ts) // 2])
    (d / "junk.onnx").write_bytes(b"\x08\x07junk" * 50)
    x = torch.rand(8, 1, 28, 28)
    y = torch.arange(8) % 10
    allnan = x.clone().fill_(float("nan"))
    onenan = x.clone()
    onenan[:, 0, 3, 3] = float("nan")
    torch.save({"x": allnan, "y": y}, d / "allnan.pt")
    torch.save({"x": onenan, "y": y}, d / "onenan.pt")
    torch.save({"x": torch.rand(8, 3, 28, 28), "y": y}, d / "rgb.pt")
    png = d / "pngs"
    for c in ("0", "1"):
        (png / c).mkdir(parents=True)
        from PIL import Image

        for i in range(3):
            Image.fromarray((torch.rand(28, 28) * 255).byte().numpy()).save(png / c / f"{i}.png")
    b = (png / "1" / "2.png").read_bytes()
    (png / "1" / "2.png").write_bytes(b[: len(b) // 2])
    return d


def cases(f, ex):
    user = [f"model.target={ex['dir'] / 'usernet.py'}:Net"]
    mod = ["model=module", *user, f"model.weights={ex['module']}", "model.mean=[0.1307]", "model.std=[0.3081]"]
    nets = f / "nets.py"
    return [
        (["checkpoint_dir={tmp}/nothing"], "no checkpoint at"),
        ([f"checkpoint_dir={f / 'trunc_ck'}"], ""),
        ([f"checkpoint_dir={f / 'junk_ck'}"], ""),
        (["model=module", *user, f"model.weights={f / 'trunc_weights.pt'}"], ""),
        (["model=module", *user, f"model.weights={f / 'junk_weights.pt'}"], ""),
        (["model=torchscript", f"model.path={f / 'trunc.ts'}"], "is not a TorchScript archive"),
        (["model=onnx", f"model.path={f / 'junk.onnx'}"], ""),
        (["model=module", f"model.target={ex['dir'] / 'usernet.py'}:Nope"], "has no attribute 'Nope'"),
        (["model=module", f"model.target={nets}:FiveNet"], "5"),
        (["model=module", f"model.target={nets}:NaNNet"], "non-finite logits"),
        (["model=module", f"model.target={nets}:Raising"], "my model is broken"),
        ([*mod, "dataset=tensors", f"dataset.path={f / 'rgb.pt'}", "dataset.num_classes=10"], "3 channel"),
        ([*mod, "dataset=tensors", f"dataset.path={f / 'allnan.pt'}", "dataset.num_classes=10"], "NaN"),
        ([*mod, "dataset=tensors", f"dataset.path={f / 'onenan.pt'}", "dataset.num_classes=10"], "NaN"),
        ([*mod, "dataset=folder", f"dataset.root={f / 'pngs'}", "dataset.channels=1", "dataset.image_size=28"], ""),
        (["dataset.shard=5/4"], "dataset.shard=5/4"),
        (["attack=pgd", "budget.eps=null"], "eps-bounded attack"),
        (["attack=pgd", "isolate=true"], "isolate=true cannot run 'pgd'"),
        (["attack=pgd", "attack.params.steps=0"], "attack.params.steps"),
        (["model=module", "model.target=os:system", "+model.params.command=touch {tmp}/PWNED"], "standard library"),
        (["model=module", "model.target=subprocess:call", "+model.params.args=touch"], "standard library"),
    ]


@pytest.mark.slow
def test_refused_runs_leave_every_folder_untouched(files, exported, ckpt_dir, tmp_path):  # noqa: F811
    """Each refusal: exit 2, exactly one line, no traceback; the folder it was aimed at (a fresh path, or a
    finished run) byte-identical, and nothing new anywhere under the working folder."""
    base = tmp_path
    prev = base / "prev"
    ok = run_cli("attack", "dataset.n_samples=4", "attack.params.steps=2", "progress=false", f"checkpoint_dir={ckpt_dir}",
                 f"hydra.run.dir={prev}", cwd=base)
    assert ok.returncode == 0, ok.stderr
    failures = []
    for args, msg in cases(files, exported):
        args = [a.replace("{tmp}", str(base)) for a in args]
        if not any(a.startswith("checkpoint_dir") for a in args):
            args.append(f"checkpoint_dir={ckpt_dir}")
        for target in (base / "fresh" / "run", prev):
            before = snapshot(base)
            p = run_cli("attack", "dataset.n_samples=4", "attack.params.steps=2", "progress=false",
                        f"hydra.run.dir={target}", *args, cwd=base)
            lines = [l for l in p.stderr.splitlines() if l.strip()]
            want = msg if target != prev else ""  # a finished run of another config may be refused for that first
            if p.returncode != 2 or len(lines) != 1 or not lines[0].startswith("robench: error: ") or want not in lines[0] \
                    or "Traceback" in p.stderr + p.stdout:
                failures.append(f"{args} -> {target.name}: exit {p.returncode}, stderr {lines[:3]}")
            after = snapshot(base)
            if after != before:
                new = sorted(set(after) - set(before)) or sorted(k for k in after if after[k] != before.get(k))
                failures.append(f"{args} -> {target.name}: changed {new[:4]}")
    assert not failures, "\n".join(failures)
    assert not (base / "PWNED").exists()  # os:system was never called


def test_corrected_command_runs_into_the_folder_a_refusal_was_aimed_at(ckpt_dir, tmp_path):
    run = tmp_path / "run"
    bad = run_cli("attack", "dataset.n_samples=4", "attack=pgd", "budget.eps=null", "progress=false",
                  f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={run}", cwd=tmp_path)
    assert bad.returncode == 2 and not run.exists()
    good = run_cli("attack", "dataset.n_samples=4", "attack=pgd", "attack.params.steps=2", "progress=false",
                   f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={run}", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert (run / "summary.json").exists() and (run / "attack.log").exists()


# ---------------------------------------------------------------- the Python API: one error type
class IntLogits(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 10, dtype=torch.long)


class OneD(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1).sum(1)


class Raises(torch.nn.Module):
    def forward(self, x):
        raise KeyError("inside the user's model")


def api_cases(victim, x, y, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    nanx = x.clone()
    nanx[0, 0, 1, 1] = float("nan")
    return [
        (dict(x=x[:0], y=y[:0]), "holds no inputs"),
        (dict(y=["a"] * len(y)), "integer class label"),
        (dict(y=y + 20, correct_only=False), "classes 0..9 of the model"),
        (dict(y=y + 20), "classes 0..9 of the model"),
        (dict(model=Raises()), "the model raised KeyError"),
        (dict(model=OneD()), "one row of logits per input"),
        (dict(model=IntLogits()), "logits must be floating point"),
        (dict(seed=-1), "seed must be an integer"),
        (dict(mean=[0.1, 0.2, 0.3], std=[0.3, 0.3, 0.3]), "3 values but the inputs have 1 channel"),
        (dict(mean=[0.1], std=[0.0]), "std= must be > 0"),
        (dict(run_dir=afile), "is a file, not a folder"),
        (dict(run_dir=ro / "sub"), "not writable"),
        (dict(x=nanx), "NaN or infinite"),
        (dict(x=x * float("inf")), "NaN or infinite"),
        (dict(attack="pgd", budget=robench.Budget(eps=None)), "eps-bounded attack"),
        (dict(targets=torch.full_like(y, 12)), "targets must be classes 0..9"),
    ]


def test_every_api_failure_is_a_one_line_robench_error(victim, test_xy, tmp_path):
    import os

    x, y = test_xy[0][:6], test_xy[1][:6]
    failures = []
    for kw, msg in api_cases(victim, x, y, tmp_path):
        kw = dict(kw)
        args = (kw.pop("model", victim), kw.pop("x", x), kw.pop("y", y))
        kw.setdefault("attack", "fgsm")
        try:
            robench.evaluate(*args, **kw)
            failures.append(f"{msg}: no error")
        except RobenchError as e:
            if "\n" in str(e) or msg not in str(e):
                failures.append(f"{msg}: {e!r}")
        except Exception as e:  # noqa: BLE001
            failures.append(f"{msg}: {type(e).__name__}: {e}")
    if os.geteuid() == 0:  # root writes anywhere: the read-only case cannot fail here
        failures = [f for f in failures if not f.startswith("not writable")]
    assert not failures, "\n".join(failures)
    with pytest.raises(RobenchError, match="budget.eps must be a plain Python number"):
        robench.Budget(eps=torch.tensor(0.3))
    with pytest.raises(RobenchError) as e:
        robench.evaluate(Raises(), x, y, attack="fgsm")
    assert isinstance(e.value.__cause__, KeyError)  # the model's own exception, chained


class NaNUnderAttack(torch.nn.Module):
    """A victim that answers clean inputs, and NaN for perturbed rows of its brightest image (batch 1)."""

    def __init__(self, net, marker):
        super().__init__()
        self.net, self.marker = net, marker

    def forward(self, x):
        out = self.net(x)
        hit = ((x - self.marker).flatten(1).abs().amax(1) > 0) & ((x - self.marker).flatten(1).abs().amax(1) < 0.5)
        return torch.where(hit[:, None], torch.full_like(out, float("nan")), out)


def test_a_victim_turning_nan_mid_run_stops_it_and_keeps_the_completed_batches(victim, test_xy, tmp_path):
    x, y = test_xy[0][:8].clone(), test_xy[1][:8]
    model = NaNUnderAttack(victim, x[5].clone())
    with pytest.raises(RobenchError, match="non-finite logits") as e:
        robench.evaluate(model, x, y, attack="fgsm", batch_size=4, run_dir=tmp_path / "run",
                         budget=robench.Budget("linf", 0.1))
    assert "\n" not in str(e.value)
    rec = (tmp_path / "run" / "records.csv").read_text().splitlines()
    assert len(rec) == 1 + 4  # the header and the 4 rows of batch 0, certified; batch 1 never reported
    assert not (tmp_path / "run" / "summary.json").exists()


def test_model_target_names_a_module_class_or_python_function(tmp_path):
    from robench.models.weights import import_code

    for bad, msg in (("os:system", "standard library"), ("subprocess:Popen", "standard library"),
                     ("builtins:eval", "standard library"), ("torch.nn:functional", "a module")):
        with pytest.raises(RobenchError, match=msg):
            import_code(bad, "model.target")
    (tmp_path / "m.py").write_text("import torch\nclass NotNet: pass\nmake = lambda: 1\n"
                                   "def build():\n    return torch.nn.Linear(2, 2)\n")
    with pytest.raises(RobenchError, match="not a torch.nn.Module subclass"):
        import_code(f"{tmp_path / 'm.py'}:NotNet", "model.target")
    assert import_code(f"{tmp_path / 'm.py'}:build", "model.target")().out_features == 2
    assert import_code("torch.nn:Linear", "model.target") is torch.nn.Linear
