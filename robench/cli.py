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

attack and train-defense are Hydra apps: key=value overrides, -m/--multirun sweeps (launcher=joblib|slurm|
submitit_local|ray), --cfg job, hydra.run.dir=..., hydra.sweep.dir=... all work; --quiet prints errors only.
Re-running a command with the same hydra.run.dir / hydra.sweep.dir resumes it. See README.md.
"""


def die(msg: str, code: int = 2) -> None:
    msg = " ".join(str(msg).split())  # always one line, whatever an underlying library put in it
    print(f"robench: error: {msg}", file=sys.stderr)
    sys.exit(code)


def _user_searchpath(args: List[str]) -> bool:
    return any(a.startswith("hydra.searchpath") for a in args)


#: launcher option -> (module of its Hydra plugin, pyproject extra that installs it)
LAUNCHER_PLUGINS = {"joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
                    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
                    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
                    "ray": ("hydra_plugins.hydra_ray_launcher", "ray")}


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
                    raise RobenchError(f"launcher={v} needs its Hydra plugin ({mod.split('.')[-1].replace('_', '-')}): "
                                       f"pip install 'robench[{extra}]'")


#: Hydra's own command-line flags that take a value
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd",
                     "--package", "-p", "--info", "--experimental-rerun"}


def _dry_compose(config_name: str, args: List[str]) -> None:
    """Compose the config once (first value of each sweep) so that a bad override fails in one line,
    before Hydra prints its multi-line report."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from robench.config import configs_dir

    overrides, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a.startswith("-"):
            skip = a in _FLAGS_WITH_VALUE
            continue
        overrides.append(a)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        keep = lambda k: not k.startswith("hydra.") or k.startswith("hydra.searchpath")  # search path: plugin configs
        plain = [f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
                 for o in parsed if keep(o.get_key_element().lstrip("+~"))]
        with initialize_config_dir(version_base="1.3", config_dir=str(configs_dir())):
            compose(config_name=config_name, overrides=plain)
    except Exception as e:  # Hydra's errors are multi-line: keep the first, it names the problem
        msg = " ".join(str(e).strip().splitlines()[:2]).strip() or e.__class__.__name__
        raise RobenchError(f"bad override: {msg}") from None
    finally:
        GlobalHydra.instance().clear()


def _hydra_command(prog: str, config_name: str, job: Callable, args: List[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from robench.config import configs_dir
    from robench.registry import PLUGIN_CONFIG_DIRS, load_plugins

    load_plugins()  # fills PLUGIN_CONFIG_DIRS
    if "--quiet" in args or "-q" in args:  # scripts: errors only (no bars, tables or Hydra's launch lines)
        args = [a for a in args if a not in ("--quiet", "-q")] + ["quiet=true", "hydra.hydra_logging.root.level=WARNING"]
    _precheck_groups(args)
    if PLUGIN_CONFIG_DIRS and not _user_searchpath(args):
        args = args + ["hydra.searchpath=[" + ",".join(f"file://{d}" for _, d in PLUGIN_CONFIG_DIRS) + "]"]
    _dry_compose(config_name, args)

    @hydra.main(version_base="1.3", config_path=str(configs_dir()), config_name=config_name)
    def app(cfg) -> None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            job(cfg, run_dir)
        except RobenchError as e:
            die(str(e))

    sys.argv = [prog] + args
    app()


def main(argv: List[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "attack":
            from robench.run import run_attack
            _hydra_command("robench attack", "run_attack", run_attack, rest)
        elif cmd == "train-defense":
            from robench.run import run_train
            _hydra_command("robench train-defense", "run_train", run_train, rest)
        elif cmd == "report":
            from robench.report import main as report_main
            report_main(rest)
        elif cmd in ("landscape", "invariance"):  # robench/checks.py
            from robench import checks
            getattr(checks, f"{cmd}_main")(rest)
        elif cmd == "list":
            list_plugins(rest)
        else:
            raise RobenchError(f"unknown command '{cmd}'; valid: attack, train-defense, report, landscape, invariance, list")
    except RobenchError as e:
        die(str(e))
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
        t.add_column("name")
        t.add_column("config")
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
                t.add_row(name, f"{w[:-1]}={name}" if name in opts else f"{w[:-1]}.name={name}", reg.describe(name))
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
