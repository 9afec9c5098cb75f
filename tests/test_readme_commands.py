"""Commands and facts the README and the documentation (docs/*.md) state, checked against robench (issue 30's
list of commands that failed as written). Each test reads the command from the text itself, so an edit that
breaks it fails here; every `robench attack` / `train-defense` command shown anywhere passes robench's own
validation (Hydra composition and the whole-config checks), and the cheap ones run on a few images."""
from __future__ import annotations

import os
import re
import shlex
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import ROOT, run_cli

DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
#: the README and every documentation page, as one text (a command lives in one of them)
README = "\n".join(f.read_text() for f in DOC_FILES)


def readme_command(start: str) -> list:
    """The documentation's one command line beginning with ``start`` (``robench attack ...``), as argv after
    ``robench <command>``, its trailing ``# comment`` dropped."""
    lines = sorted({ln.strip() for ln in README.splitlines() if ln.strip().startswith(start)})
    assert len(lines) == 1, f"the documentation has {len(lines)} different lines starting with {start!r}"
    args = shlex.split(lines[0].split("  #")[0].split(" # ")[0])
    assert args[0] == "robench"
    return args[2:]


def validate(command: str, args: list, tmp_path: Path, multirun: bool = False):
    """robench's checks before any work (robench.cli: Hydra composition, then the whole-config, run-folder,
    slice and checkpoint checks); returns the composed config."""
    from robench import cli

    name = "run_attack" if command == "attack" else "run_train"
    composed = cli._dry_compose(name, args + [f"hydra.run.dir={tmp_path}/run"], multirun)
    cli._prevalidate(name, composed.copy(), multirun)
    return composed


def test_shard_example_runs_as_written(tmp_path, ckpt_dir):
    """`dataset.shard=1/4` of a 200-image slice needs batches smaller than the slice: the README's
    command sets attack.batch_size=50, and runs: shard 1 holds positions 50-99 of the slice."""
    args = readme_command("robench attack dataset.n_samples=200 dataset.offset=400 dataset.shard=1/4")
    assert "attack.batch_size=50" in args
    p = run_cli("attack", *args, "progress=false", f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={tmp_path}/run",
                cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    r = pd.read_csv(tmp_path / "run" / "records.csv")
    assert r["index"].tolist() == list(range(450, 500))


def test_module_params_override_composes(tmp_path):
    """`'+model.params={depth: 28}'` composes (`model.params={...}` is refused by Hydra's struct mode);
    what then fails is only the README's placeholder module, in one line."""
    args = readme_command("robench attack model=module model.target=mypkg.nets:WRN")
    from robench import cli

    cfg = cli._dry_compose("run_attack", args)
    assert dict(cfg.model.params) == {"depth": 28}
    p = run_cli("attack", *args, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert p.returncode == 2 and "bad override" not in p.stderr and "cannot import mypkg.nets" in p.stderr, p.stderr


@pytest.fixture
def rgb_tensors(tmp_path):
    """An ImageNet-like tensors file (3x32x32, 1,000 classes) for the zoo models."""
    f = tmp_path / "rgb.npz"
    g = np.random.default_rng(0)
    np.savez(f, x=g.random((4, 3, 32, 32), dtype=np.float32), y=np.arange(4), num_classes=1000)
    return f


@pytest.mark.parametrize("zoo", ["timm", "torchvision"])
def test_offline_zoo_fails_in_one_line_within_seconds(zoo, rgb_tensors, tmp_path):
    """The README's zoo commands (their dataset swapped for a small tensors file) offline, with empty
    caches: one line on stderr, nothing from the hub libraries (no retries, no "Downloading"), and
    robench's own start-up aside, seconds."""
    if zoo == "timm":
        pytest.importorskip("timm")
        args = readme_command("robench attack dataset=imagenet model=timm")
    else:
        args = readme_command("robench attack dataset=imagenet model=torchvision")
    args = [a for a in args if not a.startswith("dataset=")]
    env = {"ROBENCH_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"),
           "HF_HUB_OFFLINE": ""}
    t0 = time.time()
    p = run_cli("attack", "dataset=tensors", f"dataset.path={rgb_tensors}", "dataset.num_classes=1000", *args,
                f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, env=env)
    seconds = time.time() - t0
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "cannot be reached (offline)" in lines[0] and "or pass model.weights=FILE" in lines[0]
    assert lines[0].endswith("or pass model.weights=FILE")  # nothing cut mid-word after it
    assert "Downloading" not in p.stdout + p.stderr and "Retry" not in p.stdout + p.stderr
    assert seconds < 60, seconds  # interpreter, torch and timm start-up on a loaded 2-core machine included


def test_unreachable_hub_is_told_it_is_offline(monkeypatch, tmp_path):
    """Without HF_HUB_OFFLINE / ROBENCH_OFFLINE, a hub that does not answer the probe counts as offline:
    Hugging Face's libraries are put in offline mode for the call (and restored), so a missing file
    fails at once instead of after a minute of retries."""
    pytest.importorskip("timm")
    import huggingface_hub.constants as hc

    from robench.errors import RobenchError
    from robench.models import hub
    from robench.models.sources import build_source

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("ROBENCH_OFFLINE", raising=False)
    probed = []
    monkeypatch.setattr(hub, "reachable", lambda host, *a, **k: probed.append(host) or False)
    seen = {}
    import timm

    def fake_create(name, pretrained=False, **kw):  # what timm would find with the hub offline: no cached file
        seen["offline"] = hc.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
        raise FileNotFoundError("no cached file")

    monkeypatch.setattr(timm, "create_model", fake_create)
    was = hc.HF_HUB_OFFLINE
    with pytest.raises(RobenchError, match=r"not in the Hugging Face cache .* cannot be reached \(offline\)"):
        build_source({"source": "timm", "name": "resnet18", "pretrained": True, "mean": None, "std": None}, None,
                     probe=False)
    assert probed == [hub.HF_HOST] and seen["offline"] == (True, "1")
    assert hc.HF_HUB_OFFLINE == was and "HF_HUB_OFFLINE" not in os.environ


def test_detector_label_is_the_documented_one():
    """The labels the README lists for run folders and summaries are the ones robench gives."""
    from robench import cli
    from robench.defenses.compose import defense_label

    m = re.search(r"use the label (`[^.]*?), \.\.\.", README.replace("\n", " "))
    documented = re.findall(r"`([^`]+)`", m.group(1))
    assert documented == ["jpeg", "pgd_at+jpeg", "feature_squeeze_detect"]
    for choice, label in (("defense=jpeg", "jpeg"), ("defense=[pgd_at,jpeg]", "pgd_at+jpeg"),
                          ("defense=[none,feature_squeeze_detect]", "feature_squeeze_detect")):
        assert defense_label(cli._dry_compose("run_attack", [choice]).defense) == label
    assert "robench attack 'defense=[none,feature_squeeze_detect]'" in README


def test_missing_checkpoint_hint_for_tensors_is_a_command_that_works(tmp_path):
    """`dataset=tensors` without a checkpoint: the printed train-defense command carries dataset.path,
    passes robench's validation, and writes the checkpoint exactly where the attack looks."""
    from robench import cli
    from robench.models.checkpoint import checkpoint_path
    from robench.errors import RobenchError

    g = np.random.default_rng(0)
    np.savez(tmp_path / "test.npz", x=g.random((600, 1, 28, 28), dtype=np.float32), y=g.integers(0, 10, 600))
    ck = tmp_path / "ck"
    p = run_cli("attack", "dataset=tensors", "dataset.path=test.npz", "model=cw_mnist", f"checkpoint_dir={ck}",
                f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    want = re.search(r"no checkpoint at (\S+): create it with `([^`]+)`", p.stderr)
    assert want, p.stderr
    hint = shlex.split(want.group(2))
    assert hint[:2] == ["robench", "train-defense"] and "dataset.path=test.npz" in hint
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the hint's relative dataset.path is the user's, from the folder they ran in
    try:
        c = validate_and_load("train-defense", hint[2:], tmp_path)
        assert checkpoint_path(c["checkpoint_dir"], c["dataset"], c["model"], "none") == Path(want.group(1))
        with pytest.raises(RobenchError, match="needs dataset.path"):  # the old hint, without dataset.path
            validate_and_load("train-defense", [a for a in hint[2:] if not a.startswith("dataset.path=")], tmp_path)
    finally:
        os.chdir(cwd)


def validate_and_load(command, args, tmp_path) -> dict:
    """:func:`validate`, then the data the command would train on (what the old hint failed on)."""
    from omegaconf import OmegaConf, open_dict

    from robench.data import load_dataset

    composed = validate(command, args, tmp_path)
    with open_dict(composed):
        del composed["hydra"]
    load_dataset(composed.dataset)
    return OmegaConf.to_container(composed, resolve=True)


def test_onnx_export_snippet_runs(tmp_path):
    """The README's export call, executed as written on a small network, gives a file model=onnx loads."""
    pytest.importorskip("onnx2torch")
    m = re.search(r"`(torch\.onnx\.export\(model, \(x,\), \"victim\.onnx\".*?\))`", README.replace("\n", " "))
    assert m, "the README's ONNX export snippet"
    snippet = m.group(1)
    assert 'input_names=["x"]' in snippet
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    x = torch.rand(2, 1, 28, 28)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eval(snippet, {"torch": torch, "model": model, "x": x})
    finally:
        os.chdir(cwd)
    from robench.models.sources import build_source

    net, meta = build_source({"source": "onnx", "name": "onnx", "path": str(tmp_path / "victim.onnx")}, None,
                             probe=False)
    with torch.no_grad():
        assert (net(torch.rand(5, 1, 28, 28)).shape == (5, 10))


def test_config_table_lists_every_option():
    """Every config file of every group appears in the README's config-group table."""
    for group in ("dataset", "model", "defense", "attack", "budget"):
        row = next(ln for ln in README.splitlines() if ln.startswith(f"| `{group}` |"))
        missing = [f.stem for f in sorted((ROOT / "configs" / group).glob("*.yaml")) if f"`{f.stem}`" not in row]
        assert not missing, f"README's config table, {group}: {missing}"


def test_demo_table_and_defense_table_agree_on_clean_accuracy():
    demo = re.search(r"│ clean accuracy\s+│\s+([\d.]+%) │", README).group(1)
    undefended = re.search(r"^\| undefended \| ([\d.]+%) \|", README, re.M).group(1)
    attacked = int(re.search(r"│ attacked\s+│\s+(\d+) │", README).group(1))
    assert demo == undefended
    assert attacked == round(float(demo[:-1]) * 10)  # the demo attacks every correct one of 1,000 images


def documented_commands():
    """Every `robench attack ...` / `robench train-defense ...` line in a code block of the README or the docs:
    (file, argv after `robench`), its `# comment` dropped."""
    out = []
    for f in DOC_FILES:
        in_block, env = False, {}
        for ln in f.read_text().replace("\\\n", " ").splitlines():  # continued lines joined
            if ln.strip().startswith("```"):
                in_block, env = not in_block, {}
                continue
            s = ln.strip()
            m = re.match(r"^([A-Z][A-Z0-9_]*)=([\"'])(.*)\2$", s)
            if in_block and m:  # a shell variable the block's next commands use
                env[m.group(1)] = m.group(3)
                continue
            for part in s.split(" && "):
                part = re.sub(r"\$\{?([A-Z][A-Z0-9_]*)\}?", lambda v: env.get(v.group(1), v.group(0)), part.strip())
                if in_block and (part.startswith("robench attack") or part.startswith("robench train-defense")):
                    cmd = part.split("  #")[0].split(" # ")[0].strip()
                    if "..." in cmd or "<" in cmd or "$" in cmd:  # a template, not a command
                        continue
                    out.append((f.relative_to(ROOT).as_posix(), shlex.split(cmd)[1:]))
    return out


COMMANDS = documented_commands()


def test_the_documentation_shows_commands():
    assert len(COMMANDS) >= 40 and any(f == "README.md" for f, _ in COMMANDS)


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[f"{f}:{' '.join(a)[:60]}" for f, a in COMMANDS])
def test_every_documented_command_passes_validation(where, argv, tmp_path):
    """Hydra's composition and robench's whole-config checks (what `robench attack` / `train-defense` run
    before any data, checkpoint or folder is touched), for every documented command as written."""
    from robench import cli
    from robench.config import validate_attack_config, validate_train_config

    command, args = argv[0], argv[1:]
    if "attack=example_fgsm" in args:  # the plugin example: a command for after `pip install ./examples/...`
        from robench.config import group_options

        if "example_fgsm" not in group_options("attack"):
            pytest.skip("the example plugin is not installed here (tests/test_cli.py installs it and runs this)")
    name = "run_attack" if command == "attack" else "run_train"
    multirun = any(a in ("-m", "--multirun") for a in args)
    args = cli._flags_first([a for a in args if a not in ("--quiet", "-q")])
    composed = cli._dry_compose(name, args, multirun)
    from omegaconf import open_dict

    with open_dict(composed):
        del composed["hydra"]
    (validate_attack_config if name == "run_attack" else validate_train_config)(composed)
