"""Issue 17: no invalid setting reaches an attack, and a refused run leaves every folder untouched.

The fuzz table runs in-process (``robench.cli.main`` with argv; stderr captured): each command line
must exit 2 with exactly one line on stderr and leave a real, pre-existing run folder byte-identical.
A few cases also run as real subprocesses.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from robench import cli
from tests.conftest import run_cli

BIG = str(2 ** 70)


def snapshot(folder: Path) -> dict:
    """Every file and folder below ``folder`` (hidden ones included) -> its bytes (None: a folder)."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def world(tmp_path_factory, ckpt_dir):
    """A real finished attack run folder, plus a file and an unrelated folder to point hydra.run.dir at."""
    base = tmp_path_factory.mktemp("fuzz")
    prev = base / "prev"
    p = run_cli("attack", "dataset.n_samples=20", "attack.params.steps=5", "progress=false", f"checkpoint_dir={ckpt_dir}",
                f"hydra.run.dir={prev}", cwd=base)
    assert p.returncode == 0, p.stderr
    assert (prev / "summary.json").exists() and (prev / "overrides.yaml").exists()
    (base / "afile").write_text("not a folder\n")
    (base / "other").mkdir()
    (base / "other" / "notes.txt").write_text("someone else's\n")
    (base / "badsum").mkdir()
    (base / "badsum" / "summary.json").write_text("{}")
    (base / "partial").mkdir()
    (base / "partial" / "summary.json").write_text(json.dumps({"command": "attack", "attack": "pgd"}))
    return {"base": base, "prev": prev, "ck": Path(ckpt_dir)}


# (argv after `robench attack`, a piece of the expected message); {base} and {ck} are filled in.
ATTACK_CASES = [
    # budget
    ("budget.eps=nan", "budget.eps must be a number >= 0"), ("budget.eps=inf", "budget.eps must be a number >= 0"),
    ("budget.eps=-inf", "budget.eps must be"), ("budget.eps=-0.1", "budget.eps must be"),
    ("budget.eps=abc", "budget.eps must be"), ("budget.eps=true", "budget.eps must be"),
    ("budget.max_queries=0", "budget.max_queries must be an integer >= 1"),
    ("budget.max_queries=1.5", "budget.max_queries must be an integer"), ("budget.max_queries=abc", "budget.max_queries"),
    ("budget.max_queries=2**70", "budget.max_queries"), (f"budget.max_queries={BIG}", "budget.max_queries"),
    ("budget.max_queries=-5", "budget.max_queries"), ("budget.max_queries=nan", "budget.max_queries"),
    ("budget.norm=l3", "budget.norm must be one of linf, l2"), ("budget.norm=1", "budget.norm"),
    ("budget.targeted=maybe", "budget.targeted must be true or false"), ("budget.targeted=1", "budget.targeted"),
    ("budget.target=12", "budget.target=12 is out of range"), ("budget.target=-1", "budget.target=-1 is out of range"),
    ("budget.target=abc", "budget.target must be"), ("budget.target=true", "budget.target must be"),
    ("budget.checkpoints=[0]", "budget.checkpoints"), ("budget.checkpoints=abc", "budget.checkpoints"),
    ("budget.checkpoints=[99999999]", "budget.checkpoints"), ("budget.checkpoints=[]", "budget.checkpoints"),
    # attack settings and parameters
    ("attack.batch_size=1.5", "attack.batch_size must be an integer >= 1, got '1.5'"),
    ("attack.batch_size=0", "attack.batch_size"), ("attack.batch_size=abc", "attack.batch_size"),
    ("attack.batch_size=-1", "attack.batch_size"), ("attack.batch_size=nan", "attack.batch_size"),
    ("attack.batch_size=true", "attack.batch_size"), ("attack.eot_samples=0", "attack.eot_samples"),
    ("attack.eot_samples=1.5", "attack.eot_samples"), ("attack.bpda=maybe", "attack.bpda must be true or false"),
    ("attack.bpda=2", "attack.bpda"),
    ("attack.params.step_size=nan", "attack.params.step_size must be a finite number > 0 or null, got 'nan'"),
    ("attack.params.step_size=inf", "attack.params.step_size"), ("attack.params.step_size=-1", "attack.params.step_size"),
    ("attack.params.step_size=0", "attack.params.step_size"), ("attack.params.step_size=abc", "attack.params.step_size"),
    ("attack.params.steps=0", "attack.params.steps must be an integer >= 1"),
    ("attack.params.steps=1.5", "attack.params.steps must be an integer"), ("attack.params.steps=abc", "attack.params.steps"),
    ("attack.params.steps=true", "attack.params.steps"), ("attack.params.restarts=0", "attack.params.restarts"),
    ("attack.params.random_start=maybe", "attack.params.random_start must be true or false"),
    ("attack.params.loss=1", "attack.params.loss must be one of ce, cw"),
    ("attack.params.early_stop=yes", "attack.params.early_stop must be true or false"),
    ("+attack.params.wings=3", "attack 'pgd' has no parameter(s) wings"),
    ("attack.params.wings=3", "bad override: Could not override 'attack.params.wings'"),
    ("attack=nope", "unknown attack 'nope'"),
    ("attack=square attack.params.p_init=nan", "attack.params.p_init"),
    ("attack=square attack.params.p_init=0", "attack.params.p_init must be a finite number in (0, 1]"),
    ("attack=square attack.params.p_init=2", "attack.params.p_init"),
    ("attack=nes attack.params.momentum=1", "attack.params.momentum must be a finite number in [0, 1)"),
    ("attack=nes attack.params.n_samples=1", "attack.params.n_samples"),
    ("attack=zoo attack.params.beta1=1", "attack.params.beta1"),
    ("attack=genattack attack.params.pop_size=1", "attack.params.pop_size must be an integer >= 2"),
    ("attack=genattack attack.params.mutation_prob=2", "attack.params.mutation_prob"),
    ("attack=hsja attack.params.gamma=-1", "attack.params.gamma"),
    ("attack=boundary attack.params.step_adaptation=1", "attack.params.step_adaptation must be a finite number > 1"),
    ("attack=cw_l2 attack.params.learning_rate=inf", "attack.params.learning_rate"),
    ("attack=deepfool attack.params.candidates=1", "attack.params.candidates"),
    ("attack=apgd_ce attack.params.rho=0", "attack.params.rho"),
    ("attack=fgsm attack.params.step_size=nan", "attack.params.step_size"),
    ("attack=mifgsm attack.params.decay=-1", "attack.params.decay"),
    ("attack=rays attack.params.tol=0", "attack.params.tol"),
    ("attack=signopt attack.params.q=0.5", "attack.params.q must be an integer"),
    # dataset
    ("dataset.n_samples=1.5", "dataset.n_samples must be an integer >= 1 or null"),
    ("dataset.n_samples=abc", "dataset.n_samples must be an integer"), ("dataset.n_samples=0", "dataset.n_samples"),
    ("dataset.n_samples=-3", "dataset.n_samples"), ("dataset.n_samples=nan", "dataset.n_samples"),
    ("dataset.offset=abc", "dataset.offset must be an integer >= 0"), ("dataset.offset=-1", "dataset.offset"),
    ("dataset.offset=1.5", "dataset.offset"), ("dataset.offset=1000", "dataset.offset=1000 is outside the test split"),
    ("dataset.offset=990 dataset.n_samples=20", "dataset.offset=990 + dataset.n_samples=20 runs past the end"),
    ("dataset.n_samples=1001", "dataset.n_samples=1001 runs past the end of the test split (1000 images)"),
    ("dataset.shard=5/2", "dataset.shard=5/2"), ("dataset.shard=abc", "dataset.shard must look like i/n"),
    ("dataset.num_classes=1", "dataset.num_classes"), ("dataset.download=maybe", "dataset.download"),
    ("dataset=nope", "unknown dataset 'nope'"),
    # top level
    ("seed=-1", "seed must be an integer"), ("seed=1.5", "seed must be an integer"), ("seed=abc", "seed must be"),
    ("seed=2**70", "seed must be"), (f"seed={BIG}", "seed must be"), ("seed=nan", "seed must be"),
    ("device=tpu", "device must be auto, cpu, cuda or cuda:N"), ("correct_only=maybe", "correct_only must be true or false"),
    ("correct_only=2", "correct_only"), ("adaptive=maybe", "adaptive"), ("resume=maybe", "resume"),
    ("n_correct=0", "n_correct must be an integer >= 1"), ("n_correct=1.5", "n_correct"),
    ("recheck_repeats=0", "recheck_repeats"), ("recheck_repeats=abc", "recheck_repeats"),
    ("adaptive_eot_samples=0", "adaptive_eot_samples"), ("confirm_on_sight=maybe", "confirm_on_sight"),
    ("progress=maybe", "progress must be true or false"), ("quiet=3", "quiet"),
    ("checkpoint_dir=${oc.env:ROBENCH_SURELY_UNSET_VAR}", "cannot resolve checkpoint_dir"),
    ("checkpoint_dir={base}/afile", "checkpoint_dir={base}/afile is a file"),
    ("n_correct=5 dataset.shard=0/2", "n_correct cuts the slice"),
    # model
    ("model=nope", "unknown model 'nope'"), ("model.name=nope", "unknown model 'nope'"),
    ("model=small_cnn model.params.depth=0", "model.params.depth must be an integer >= 1"),
    ("model.params.dropout=1.5", "model.params.dropout"), ("model.params.dropout=nan", "model.params.dropout"),
    ("+model.params.num_classes=3", "model.params.num_classes is set by the dataset"),
    # defense
    ("defense=[pgd_at,none]", "names 2 training recipes (pgd_at, none)"), ("defense=nope", "unknown defense 'nope'"),
    ("defense=[none,jpeg] defense.input.jpeg.quality=0", "defense.input.jpeg.quality must be an integer in [1, 100]"),
    ("defense=[none,jpeg] defense.input.jpeg.quality=1.5", "defense.input.jpeg.quality"),
    ("defense=[none,bit_depth] defense.input.bit_depth.bits=0", "defense.input.bit_depth.bits"),
    ("defense=pgd_at defense.params.eps=nan", "defense.params.eps"),
    # command line, run folder
    ("attack=pgd,fgsm", "add -m"), ("budget.eps=0.1,0.2", "add -m"), ("budget.eps=[0.1", "bad override"),
    ("hydra.run.dir=", "hydra.run.dir is empty"), ("hydra.run.dir=/proc/robench_x", "hydra.run.dir=/proc/robench_x is not writable"),
    ("hydra.run.dir={base}/afile", "is a file, not a folder"), ("hydra.run.dir={base}/afile/sub", "cannot be created"),
    ("hydra.run.dir={base}/other", "is an existing folder that is not a robench run"),
    ("attack.params.steps=7", "holds a run with a different config (differs in attack.params.steps)"),
    ("-m hydra.sweep.dir={base}/sw budget.eps=0.1,nan", "budget.eps must be a number >= 0"),
    ("-m hydra.sweep.dir={base}/sw attack.params.steps=5,1.5", "attack.params.steps must be an integer"),
    ("-m hydra.sweep.dir={base}/afile budget.eps=0.1,0.2", "hydra.sweep.dir={base}/afile is a file"),
]

# (argv after `robench train-defense`, message): run in a fresh folder that must not come to exist
TRAIN_CASES = [
    ("train.epochs=abc", "train.epochs must be an integer >= 1"), ("train.epochs=1.5", "train.epochs"),
    ("train.epochs=0", "train.epochs"), ("train.lr=-1", "train.lr must be a finite number > 0"),
    ("train.lr=nan", "train.lr"), ("train.lr=inf", "train.lr"), ("train.batch_size=0", "train.batch_size"),
    ("train.optimizer=rmsprop", "train.optimizer must be one of adam, sgd"), ("train.schedule=nope", "train.schedule"),
    ("train.momentum=1", "train.momentum"), ("train.cycle_peak=1", "train.cycle_peak"),
    ("train.milestones=[0]", "train.milestones"), ("train.gamma=0", "train.gamma"), ("train.amp=maybe", "train.amp"),
    ("train.weight_decay=-1", "train.weight_decay"), ("eval.n_samples=1.5", "eval.n_samples"),
    ("eval.batch_size=0", "eval.batch_size"), ("eval.params.steps=0", "eval.params.steps"),
    ("defense=pgd_at defense.params.steps=0", "defense.params.steps"),
    ("defense=pgd_at defense.params.eps=nan", "defense.params.eps"),
    ("defense=[pgd_at,trades]", "names 2 training recipes"),
    ("defense=[none,jpeg]", "act(s) at attack time, not in training"),
    (f"seed={BIG}", "seed must be"), ("train.epochs=1 -m train.lr=abc,0.1", "train.lr"),
    ("-m train.epochs=1,0", "train.epochs must be an integer >= 1, got '0'"),
    ("checkpoint_dir=/proc/robench_ck", "checkpoint_dir=/proc/robench_ck is not writable"),
    ("checkpoint_dir={base}/afile", "checkpoint_dir={base}/afile is a file"),
]


def _fill(s: str, w: dict) -> str:
    return s.replace("{base}", str(w["base"])).replace("{ck}", str(w["ck"]))


def _one_line_exit_2(argv, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    return e.value.code, lines


@pytest.mark.slow
def test_fuzz_table_of_invalid_command_lines(world, capsys):
    """At least 100 invalid command lines: each exits 2, with exactly one line on stderr, and leaves the
    pre-existing run folder (and everything else of the fixture) byte-identical."""
    assert len(ATTACK_CASES) + len(TRAIN_CASES) >= 100
    before = snapshot(world["base"])
    failures = []
    fresh = world["base"] / "fresh_train"
    for args, msg in ATTACK_CASES + [("__train__ " + a, m) for a, m in TRAIN_CASES]:
        if args.startswith("__train__ "):
            argv = ["train-defense", "progress=false", f"checkpoint_dir={world['ck']}", f"hydra.run.dir={fresh}",
                    f"hydra.sweep.dir={fresh}", *_fill(args[10:], world).split()]
        else:
            extra = _fill(args, world).split()
            base = ["dataset.n_samples=20"] + ([] if args.startswith("attack=") else ["attack.params.steps=5"])
            argv = ["attack", *base, "progress=false", f"checkpoint_dir={world['ck']}",
                    f"hydra.run.dir={world['prev']}", *extra]
        code, lines = _one_line_exit_2(argv, capsys)
        want = _fill(msg, world)
        if code != 2 or len(lines) != 1 or not lines[0].startswith("robench: error: ") or want not in lines[0]:
            failures.append(f"{args}: exit {code}, stderr {lines}")
        assert not fresh.exists(), f"{args} created {fresh}"
    assert not failures, "\n".join(failures)
    assert snapshot(world["base"]) == before  # the earlier run, the file and the unrelated folder: untouched


def test_report_failures_are_one_line(world, capsys):
    base = world["base"]
    for argv, msg in [(["report", str(world["prev"]), "--out", "/proc/robench_report"], "/proc/robench_report"),
                      (["report", str(world["prev"]), "--out", str(base / "afile" / "sub")], "afile"),
                      (["report", str(base / "badsum")], "lacks a valid 'command'"),
                      (["report", str(base / "partial")], "lacks model, dataset, defense, budget"),
                      (["report", str(base / "nothing")], "does not exist")]:
        code, lines = _one_line_exit_2(argv, capsys)
        assert code == 2 and len(lines) == 1 and msg in lines[0], (argv, lines)


def test_a_refused_run_leaves_the_previous_folder_byte_identical(world):
    """Real subprocesses: a bad value, a different config and a sweep without -m, aimed at a finished
    run's folder: each is refused in one line and the folder (config, overrides, records, summary,
    log) stays byte-identical; `robench report` still shows that run's own overrides."""
    prev, ck = world["prev"], world["ck"]
    before = snapshot(prev)
    for bad in (["budget.eps=nan"], ["attack.params.steps=7"], ["attack=pgd,fgsm"]):
        p = run_cli("attack", "dataset.n_samples=20", "attack.params.steps=5", "progress=false", f"checkpoint_dir={ck}",
                    f"hydra.run.dir={prev}", *bad, cwd=world["base"])
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "Traceback" not in p.stderr + p.stdout
    assert snapshot(prev) == before
    from robench.report.collect import collect
    (s,) = collect([str(prev)]).attacks
    assert "attack.params.steps=5" in s["overrides"] and "steps=7" not in s["overrides"]
    # the same command again resumes: complete already, skipped, folder unchanged but for nothing
    p = run_cli("attack", "dataset.n_samples=20", "attack.params.steps=5", "progress=false", f"checkpoint_dir={ck}",
                f"hydra.run.dir={prev}", cwd=world["base"])
    assert p.returncode == 0 and "complete already" in p.stdout + p.stderr, p.stderr
    assert {k: v for k, v in snapshot(prev).items() if k != "attack.log"} == \
        {k: v for k, v in before.items() if k != "attack.log"}


def test_old_runs_overrides_are_read_from_hydra_folder(tmp_path):
    from robench.evaluation.folder import run_overrides

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- attack.params.steps=9\n- progress=false\n")
    assert run_overrides(tmp_path) == "attack.params.steps=9"
    (tmp_path / "overrides.yaml").write_text("- attack.params.steps=3\n")
    assert run_overrides(tmp_path) == "attack.params.steps=3"  # robench's own copy wins


def test_failed_samples_distortion_columns_match_the_readme(ckpt_dir, tmp_path):
    """README: l0/l2/linf are those of the best adversarial point seen, NaN when none; for a failed
    sample that point is outside eps (or failed its re-check). A hard-label attack at a tiny eps leaves
    failed samples with points outside the ball."""
    run = tmp_path / "run"
    p = run_cli("attack", "attack=rays", "budget.eps=0.02", "budget.max_queries=300", "dataset.n_samples=12",
                "progress=false", f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={run}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    r = pd.read_csv(run / "records.csv")
    failed = r[r.attacked & ~r.success]
    assert len(failed) > 0
    for _, row in failed.iterrows():
        if math.isnan(row.linf):
            assert math.isnan(row.l2) and math.isnan(row.l0)
        else:  # an adversarial point was seen: outside eps, or its success did not survive the re-check
            assert row.linf > 0.02 + 1e-6 or row.recheck_failed
    assert r[~r.attacked].linf.isna().all()
    assert (r[r.success].linf <= 0.02 + 1e-5).all()


def test_an_attack_breaking_its_declared_access_is_one_line(capsys, tmp_path):
    from omegaconf import OmegaConf

    from robench.referee.types import AccessError

    def job(cfg, folder):
        raise AccessError("an attack with access 'label' asked for scores-level answers")

    with pytest.raises(SystemExit) as e:
        cli.run_job(job, OmegaConf.create({"attack": {"name": "sneaky"}}), tmp_path / "run")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert "attack 'sneaky' broke its declared access (an attack with access 'label' asked for scores" in err[0]


def test_every_shipped_preset_passes_validation():
    """The checks refuse nothing robench ships: every attack, defense and model preset, and every
    experiment preset, composes and validates (attack, and train-defense for training recipes)."""
    from hydra import compose, initialize_config_dir

    from robench.config import configs_dir, group_options, validate_attack_config, validate_train_config
    from robench.defenses.compose import _kind

    problems = []
    with initialize_config_dir(version_base="1.3", config_dir=str(configs_dir())):
        attacks, defenses, models = group_options("attack"), group_options("defense"), group_options("model")
        n = max(len(attacks), len(defenses), len(models))  # every preset at least once, in few compositions
        def attack_args(a):  # what each attack needs to run at all (its declarations; attack=external: its code)
            from robench.registry import ATTACKS

            if a == "external":
                return ["attack=external", "attack.code=tests/hostile_plugins.py:Honest"]
            cls = ATTACKS.get(a) if a in ATTACKS else None  # a config option may name another attack (autoattack_lite)
            norms = tuple(getattr(cls, "norms", ("linf",)))
            return [f"attack={a}"] + (["budget.eps=null"] if getattr(cls, "eps_policy", "") == "null" else []) + \
                ([] if "linf" in norms else ["budget=l0_24"] if norms == ("l0",) else [f"budget.norm={norms[0]}"])

        def l0_only(a):
            from robench.registry import ATTACKS

            return a in ATTACKS and tuple(getattr(ATTACKS.get(a), "norms", ())) == ("l0",)

        runs = []
        for i in range(n):
            a, d, m = attacks[i % len(attacks)], defenses[i % len(defenses)], models[i % len(models)]
            if l0_only(a) and d != "none":  # recipes conditioned on an Linf/L2 budget refuse L0: the defense with
                runs.append(("run_attack", [*attack_args("pgd"), f"defense={d}", f"model={m}"]))  # another attack
                d = "none"
            runs.append(("run_attack", [*attack_args(a), f"defense={d}", f"model={m}"]))
        runs += [("run_train", [f"defense={d}"]) for d in defenses if _kind(d) == "train"]
        runs += [("run_attack" if "train" not in e and "plasticity" not in e else "run_train", [f"experiment={e}"])
                 for e in group_options("experiment")]
        for name, ov in runs:
            try:
                cfg = compose(config_name=name, overrides=ov)
                (validate_attack_config if name == "run_attack" else validate_train_config)(cfg)
            except Exception as e:  # noqa: BLE001 - report them all
                problems.append(f"{name} {ov}: {e}")
    assert not problems, "\n".join(problems)
