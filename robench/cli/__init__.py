"""``robench <command>``: dispatches to the Hydra apps (attack, train-defense) and to report and list.

Every user-fixable error prints one line (``robench: error: ...``) and exits with code 2.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, List

from robench.errors import RobenchError

USAGE = """usage: robench <command> [args]

commands:
  attack          run an attack: robench attack dataset=mnist model=cw_mnist attack=pgd budget=linf_0.3 [key=value ...]
  train-defense   train a victim with a recipe: robench train-defense defense=none [train.epochs=8 ...]
  report          tables (and --plots) over runs: robench report results/ [--rows attack --cols defense] [--plots]
  landscape       loss landscapes: robench landscape --defenses none,pgd_at [--eps 0.3 --grid 21 --out DIR]
  invariance      accuracy under rotation/brightness/contrast/greyscale: robench invariance --defenses none,pgd_at
  list            datasets, models, attacks, defenses, budgets, launchers, experiments: robench list [group]
  reproduce       the papers' tables (paper, robench, difference, white-box floor): robench reproduce results/multirun/paper_*

attack and train-defense are Hydra apps: key=value overrides, -m/--multirun sweeps (launcher=joblib|slurm|
submitit_local|ray), --cfg job, hydra.run.dir=..., hydra.sweep.dir=... all work; --quiet prints errors only.
Re-running a command with the same hydra.run.dir / hydra.sweep.dir resumes it. See README.md.
"""


def die(msg: str, code: int = 2) -> None:
    msg = " ".join(str(msg).split())  # always one line, whatever an underlying library put in it
    print(f"robench: error: {msg}", file=sys.stderr)
    sys.exit(code)


def os_error_line(e: OSError) -> str:
    """An OSError (unwritable folder, missing file, full disk) as one line naming the path."""
    what = e.strerror or str(e) or e.__class__.__name__
    path = e.filename if e.filename is not None else ""
    return f"{what}: {path}" + (f" -> {e.filename2}" if getattr(e, "filename2", None) else "") if path else what


def _user_searchpath(args: List[str]) -> bool:
    return any(a.startswith("hydra.searchpath") for a in args)


#: launcher option -> (module of its Hydra plugin, pyproject extra that installs it)
LAUNCHER_PLUGINS = {"joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
                    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
                    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
                    "ray": ("ray", "ray")}  # robench's own plugin (hydra_plugins/robench_ray_launcher) needs ray itself


def _precheck_groups(args: List[str]) -> None:
    """Fail fast, in one line, on a config-group choice that does not exist (e.g. attack=foo), or a
    launcher whose Hydra plugin is not installed."""
    import importlib.util

    from robench.config import GROUPS, group_options

    if _user_searchpath(args):
        return  # configs from elsewhere: let Hydra resolve them
    for a in args:
        if "=" not in a or a.startswith(("-", "+", "~")):
            continue
        key, val = a.split("=", 1)
        if key not in GROUPS + ("launcher", "experiment") or any(c in val for c in "()[]{}$*"):
            continue
        opts = group_options(key)
        for v in val.split(","):
            if v not in opts:
                raise RobenchError(f"unknown {key} '{v}'; valid: {', '.join(opts)} (see `robench list`)")
            if key == "launcher" and v in LAUNCHER_PLUGINS:
                mod, extra = LAUNCHER_PLUGINS[v]
                try:
                    found = importlib.util.find_spec(mod) is not None
                except ImportError:
                    found = False
                if not found:
                    what = f"its Hydra plugin ({mod.split('.')[-1].replace('_', '-')})" if "." in mod else f"the {mod} package"
                    raise RobenchError(f"launcher={v} needs {what}: pip install 'robench[{extra}]'")


#: Hydra's own command-line flags that take a value
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd",
                     "--package", "-p", "--info", "--experimental-rerun"}


#: Hydra's own command-line flags that take no value
_FLAGS_ALONE = {"--help", "-h", "--hydra-help", "--version", "--resolve", "--run", "-r", "--multirun", "-m",
                "--shell-completion", "-sc"}


def _flags_first(args: List[str]) -> List[str]:
    """Hydra's flags (with their values) moved before the overrides, in their order: ``a=1 -m b=2,3`` is
    what a user means by ``-m a=1 b=2,3``; an option Hydra does not know is refused in one line."""
    flags, overrides, skip = [], [], False
    for a in args:
        if skip:
            flags.append(a)
            skip = False
            continue
        if a.startswith("-"):
            name = a.split("=", 1)[0]
            if name not in _FLAGS_WITH_VALUE and name not in _FLAGS_ALONE:
                raise RobenchError(f"unknown option '{a}'; robench attack / train-defense take key=value overrides and "
                                   f"Hydra's flags ({', '.join(sorted(f for f in _FLAGS_ALONE | _FLAGS_WITH_VALUE if f.startswith('--')))})")
            flags.append(a)
            skip = name in _FLAGS_WITH_VALUE and "=" not in a
            continue
        overrides.append(a)
    return flags + overrides


def _split_flags(args: List[str]) -> List[str]:
    """The key=value overrides of a command line (Hydra's own flags and their values dropped)."""
    overrides, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a.startswith("-"):
            skip = a in _FLAGS_WITH_VALUE
            continue
        overrides.append(a)
    return overrides


def _dry_compose(config_name: str, args: List[str], multirun: bool = False):
    """Compose the config once (first value of each sweep) so that a bad override fails in one line,
    before Hydra prints its multi-line report. Returns the composed config, with its ``hydra`` node."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from robench.config import check_defense_choice, configs_dir

    overrides = _split_flags(args)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:  # Hydra's errors are multi-line: keep the first, it names the problem
        msg = " ".join(str(e).strip().splitlines()[:2]).strip() or e.__class__.__name__
        raise RobenchError(f"bad override: {msg}") from None
    for o in parsed:
        if o.is_sweep_override() and not multirun:
            raise RobenchError(f"{o.input_line} gives several values (a sweep): add -m to run one job per value, "
                               f"e.g. robench {'attack' if config_name == 'run_attack' else 'train-defense'} -m {o.input_line}")
        if o.get_key_element().lstrip("+~") == "defense" and not o.is_sweep_override():
            check_defense_choice(o.value())
    try:
        keep = lambda k: not k.startswith("hydra.") or k.startswith(("hydra.searchpath", "hydra.run.", "hydra.sweep."))
        kept = [o for o in parsed if keep(o.get_key_element().lstrip("+~"))]
        plain = [f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
                 for o in kept]
        with initialize_config_dir(version_base="1.3", config_dir=str(configs_dir())):
            first = compose(config_name=config_name, overrides=plain, return_hydra_config=True)
            if multirun:  # each further value of each swept key once (the others at their first value)
                variants = [plain[:k] + [f"{o.get_key_element()}={v}"] + plain[k + 1:]
                            for k, o in enumerate(kept) if o.is_sweep_override()
                            for v in list(o.sweep_string_iterator())[1:]]
                for ov in variants[:MAX_SWEEP_CHECKS]:
                    _validate_job(config_name, compose(config_name=config_name, overrides=ov))
            return first
    except RobenchError:
        raise
    except Exception as e:  # Hydra's errors are multi-line: keep the first, it names the problem
        msg = " ".join(str(e).strip().splitlines()[:2]).strip() or e.__class__.__name__
        raise RobenchError(f"bad override: {msg}") from None
    finally:
        GlobalHydra.instance().clear()


#: at most this many extra compositions check a sweep's further values before it starts (0.5 s each)
MAX_SWEEP_CHECKS = 32


def _validate_job(config_name: str, cfg) -> dict:
    from robench.config import validate_attack_config, validate_train_config

    return (validate_attack_config if config_name == "run_attack" else validate_train_config)(cfg)


def _prevalidate(config_name: str, composed, multirun: bool) -> None:
    """Every check that can run before Hydra touches the disk: the whole config (robench.config), the
    run folder (writable, not a file, not someone else's folder, not a run of another config) and,
    for a single attack run, that the evaluation slice fits in the test split."""
    from omegaconf import OmegaConf, open_dict

    from robench.evaluation import folder as run_folder
    from robench.config import resolved, validate_attack_config, validate_slice, validate_train_config

    hyd = composed.hydra
    with open_dict(composed):
        del composed["hydra"]
    attack = config_name == "run_attack"
    plain = _validate_job(config_name, composed)
    _refuse_gradients(plain, attack)  # model=gbdt, or an ONNX file run by onnxruntime: no gradients
    if not attack:  # the checkpoint is written after training: its folder must be writable now
        run_folder.check_output_dir(plain["checkpoint_dir"], "checkpoint_dir")
    if attack:  # what needs the data: the slice fits in the split, a target class exists; and the victim
        # (a sweep: its first job's; each job checks its own again before anything is written)
        from robench.config import validate_budget
        from robench.data import load_dataset

        d = plain["dataset"]
        splits = load_dataset(OmegaConf.create(d))
        validate_budget(plain["budget"], splits.num_classes)
        validate_slice(len(splits.test), d.get("n_samples"), d.get("offset", 0))
        _check_victim_checkpoint(plain)
    if multirun:
        run_folder.check_output_dir(_hydra_dir(hyd, "sweep.dir"), "hydra.sweep.dir")
        return
    run_folder.check_run_dir(_hydra_dir(hyd, "run.dir"), plain, resume=bool(plain.get("resume", True)) if attack else True)


def _refuse_gradients(c: dict, attack: bool) -> None:
    """A victim without gradients (model=gbdt; an ONNX file that runs through onnxruntime,
    robench/models/onnx_source.py): a gradient attack, or a training recipe other than none (any
    training for the ONNX file), fails in one line before anything is written (robench/victim.py)."""
    from robench.defenses.compose import defense_spec
    from robench.models.sources import source_gradient_free
    from robench.registry import MODELS
    from robench.victim import gradient_free, refuse_gradients

    if c["model"].get("source"):
        reason = source_gradient_free(c["model"])
        model = type("SourceVictim", (), {"gradient_free": reason})
        if reason and not attack:
            raise RobenchError(f"{reason}: robench train-defense trains through the model's gradients; attack the file "
                               f"as it is with a score- or label-based attack instead")
    else:
        model = MODELS.get(c["model"]["name"])
    if attack:
        from robench.evaluation.spec import RunSpec

        spec = RunSpec.from_config(c)
        if spec.traits is not None:  # an isolated attack declares its access from the sandbox (checked there)
            refuse_gradients(model, spec.traits.access, spec.attack.label)
        return
    recipe, reason = defense_spec(c["defense"]).recipe, gradient_free(model)
    if reason and recipe != "none":
        raise RobenchError(f"{reason}: defense={recipe} trains through the model's gradients; train it with defense=none")


def _check_victim_checkpoint(c: dict) -> None:
    """The victim's checkpoint exists (or the model is pretrained): else the command that makes it."""
    from robench.models.checkpoint import checkpoint_path, train_command
    from robench.defenses.compose import defense_spec

    recipe = defense_spec(c["defense"]).recipe
    m = c["model"]
    if (m.get("params") or {}).get("pretrained") and recipe == "none":
        return
    if m.get("source"):  # a model source brings its own weights; a recipe trained from it has a tagged path
        if recipe == "none":
            return
        from robench.models.sources import source_tag

        m = source_tag(m)
    path = checkpoint_path(c["checkpoint_dir"], c["dataset"], m, recipe)
    if not path.exists():
        make = (f"robench train-defense ... model={c['model']['source']} defense={recipe} (same model.* and dataset "
                f"options)" if c["model"].get("source") else train_command(c["dataset"], m, recipe, c["checkpoint_dir"]))
        raise RobenchError(f"no checkpoint at {path}: create it with `{make}`")


def _hydra_dir(hyd, key: str) -> str:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        v = OmegaConf.select(hyd, key, throw_on_resolution_failure=True)
    except OmegaConfBaseException as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise RobenchError(f"cannot resolve hydra.{key}: {first}") from None
    if v is None or not str(v).strip():
        raise RobenchError(f"hydra.{key} is empty: give a folder, e.g. hydra.{key}=results/my_run")
    return str(v)


#: Hydra's mutually exclusive modes and their flags
_MODE_FLAGS = {"--run": ("-r", "--run"), "--multirun": ("-m", "--multirun"), "--cfg": ("-c", "--cfg"),
               "--info": ("-i", "--info"), "--shell-completion": ("-sc", "--shell-completion")}


def _hydra_command(prog: str, config_name: str, job: Callable, args: List[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from robench.config import configs_dir
    from robench.registry import PLUGIN_CONFIG_DIRS, load_plugins

    load_plugins()  # fills PLUGIN_CONFIG_DIRS
    from hydra_plugins.robench_ray_launcher import expose

    expose()  # launcher=ray: robench's own Hydra plugin, seen by Hydra's scan in an editable install too
    if "--quiet" in args or "-q" in args:  # scripts: errors only (no bars, tables or Hydra's launch lines)
        args = [a for a in args if a not in ("--quiet", "-q")] + ["quiet=true", "hydra.hydra_logging.root.level=WARNING"]
    modes = {m for a in args for m, flags in _MODE_FLAGS.items() if a in flags}
    if len(modes) > 1:  # Hydra raises a bare ValueError for this
        raise RobenchError(f"{' and '.join(sorted(modes))} cannot be combined: give one of them")
    _precheck_groups(args)
    if PLUGIN_CONFIG_DIRS and not _user_searchpath(args):
        args = args + ["hydra.searchpath=[" + ",".join(f"file://{d}" for _, d in PLUGIN_CONFIG_DIRS) + "]"]
    args = _flags_first(args)  # Hydra's parser takes its flags before the overrides, not between them
    multirun = any(a in ("-m", "--multirun") for a in args)
    composed = _dry_compose(config_name, args, multirun)
    state = None
    if not any(a in ("--cfg", "-c", "--info", "--help", "-h", "--hydra-help", "--shell-completion", "-sc")
               for a in args):  # those only print: nothing to validate, nothing written
        from robench.evaluation.folder import FolderState

        hyd = composed.hydra
        _prevalidate(config_name, composed, multirun)
        state = FolderState.capture(_hydra_dir(hyd, "sweep.dir" if multirun else "run.dir"))

    @hydra.main(version_base="1.3", config_path=str(configs_dir()), config_name=config_name)
    def app(cfg) -> None:
        run_job(job, cfg, Path(HydraConfig.get().runtime.output_dir), state)

    sys.argv = [prog] + args
    app()


def run_job(job: Callable, cfg, run_dir: Path, state=None) -> None:
    """Run a Hydra job into its :class:`~robench.evaluation.folder.RunFolder`; whatever a user can fix, or an
    attack's broken access, ends in one line, exit 2. A job refused before its run was accepted leaves the
    folder as it was before the command (``state``: captured before Hydra made the folder)."""
    from robench.evaluation.folder import RunFolder
    from robench.referee.types import AccessError

    folder = None
    try:
        folder = _folder(cfg, run_dir, state)
        folder.hold_logs()
        job(cfg, folder)
    except RobenchError as e:
        _abandon(folder, run_dir, state)
        die(str(e))
    except AccessError as e:  # an attack broke its declared access: a bug in the attack, said in one line
        _abandon(folder, run_dir, state)
        name = cfg.get("attack", {}).get("name", "?") if hasattr(cfg, "get") else "?"
        die(f"attack '{name}' broke its declared access ({e}); the oracle refused the query: "
            f"fix the attack's `access` or the queries it makes")
    except OSError as e:  # a folder or file the run needs: unwritable, missing, full disk
        _abandon(folder, run_dir, state)
        die(os_error_line(e))
    except BaseException:
        _abandon(folder, run_dir, state)
        raise
    finally:
        if folder is not None and not folder.accepted:
            folder.abandon()


def _folder(cfg, run_dir: Path, state):
    """The job's run folder, with what it held before the command (a sweep's state holds its job folders)."""
    from omegaconf import OmegaConf

    from robench.evaluation.folder import FolderState, RunFolder

    plain = OmegaConf.to_container(cfg, resolve=True)
    return RunFolder(run_dir, plain, resume=bool(plain.get("resume", True)),
                     state=FolderState.for_job(state, run_dir) if state is not None else None)  # noqa: E501


def _abandon(folder, run_dir: Path, state) -> None:
    """Before the run was accepted: remove what the command made (folder and log), nothing else."""
    if folder is not None:
        folder.abandon()
    elif state is not None:
        import logging

        from robench.evaluation.folder import FolderState

        for h in list(logging.getLogger().handlers):  # Hydra's job log in the refused folder
            if getattr(h, "baseFilename", None) and Path(h.baseFilename).parent == Path(run_dir).absolute():
                logging.getLogger().removeHandler(h)
                h.close()
        FolderState.for_job(state, run_dir).restore(Path(run_dir))


def quiet_library_warnings() -> None:
    """Library deprecation notices (torch.jit, onnx, ...) are for robench's developers, not its users: the
    CLI does not print them, so that a refusal stays one line. robench's own warnings still show."""
    import warnings

    for cat in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=cat)


def main(argv: List[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_library_warnings()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd in ("attack", "train-defense", "landscape", "invariance"):
            from robench.cli.cpu_malloc import tune   # large CPU batches: reuse freed memory (robench/cli/cpu_malloc.py)
            tune()
        if cmd == "attack":
            from robench.cli.attack_job import run_attack
            _hydra_command("robench attack", "run_attack", run_attack, rest)
        elif cmd == "train-defense":
            from robench.cli.train_job import run_train
            _hydra_command("robench train-defense", "run_train", run_train, rest)
        elif cmd == "report":
            from robench.report import main as report_main
            report_main(rest)
        elif cmd in ("landscape", "invariance"):  # robench/analysis.py
            from robench import analysis as checks
            getattr(checks, f"{cmd}_main")(rest)
        elif cmd == "list":
            list_plugins(rest)
        elif cmd == "reproduce":
            from robench.reproduce import main as reproduce_main
            reproduce_main(rest)
        else:
            raise RobenchError(f"unknown command '{cmd}'; valid: attack, train-defense, report, landscape, invariance, list, reproduce")
    except RobenchError as e:
        die(str(e))
    except OSError as e:
        die(os_error_line(e))
    except KeyboardInterrupt:
        die("interrupted (records written so far are kept in the run folder)", 130)


def list_plugins(args: List[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    from rich.markup import escape

    from robench.config import group_options
    from robench.registry import REGISTRIES

    groups = ["datasets", "models", "attacks", "defenses", "budgets", "launchers", "experiments"]
    want = [a.rstrip("s") + "s" for a in args] or groups
    for w in want:
        if w not in groups:
            raise RobenchError(f"robench list: unknown group '{w}'; valid: {', '.join(groups)}")
    console = Console()
    for w in want:
        t = Table(title=w, title_justify="left", show_header=True, header_style="bold")
        t.add_column("name", overflow="fold")
        t.add_column("config", overflow="fold")  # wrapped, never cut with an ellipsis: the value is meant to be copied
        t.add_column("description")
        if w in ("launchers", "experiments"):
            from robench.config import config_dirs
            for o in group_options(w[:-1]):
                f = next(d / w[:-1] / f"{o}.yaml" for d in config_dirs() if (d / w[:-1] / f"{o}.yaml").exists())
                t.add_row(o, f"{w[:-1]}={o}", escape(preset_comment(f.read_text())))
        elif w == "budgets":
            import yaml

            from robench.config import config_dirs
            for o in group_options("budget"):
                f = next(d / "budget" / f"{o}.yaml" for d in config_dirs() if (d / "budget" / f"{o}.yaml").exists())
                b = yaml.safe_load(f.read_text())
                t.add_row(o, f"budget={o}", f"{b['norm']} eps={b['eps']}, max {b['max_queries']} queries")
        else:
            reg = REGISTRIES[w]
            opts = set(group_options(w[:-1]))
            for name, _ in reg.items():
                t.add_row(name, f"{w[:-1]}={name}" if name in opts else f"{w[:-1]}.name={name}", escape(reg.describe(name)))
        console.print(t)


def preset_comment(text: str) -> str:
    """The leading comment block of a preset file (minus ``# @package``): what it is, which table."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            if lines or line.strip():
                break
            continue
        body = line.lstrip("#").strip()
        if not body.startswith("@package"):
            lines.append(body)
    return " ".join(l for l in lines if l)
