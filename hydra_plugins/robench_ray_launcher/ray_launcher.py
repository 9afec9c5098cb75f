"""``launcher=ray``: each job of a Hydra sweep as one Ray task (``pip install 'robench[ray]'``).

robench's own launcher plugin, on Ray's task API only (``ray.init``, ``ray.remote``, ``ray.get``), so
it installs beside robench's other dependencies: Hydra's ``hydra-ray-launcher`` (1.2.2, the latest)
pins ``cloudpickle<3``, which joblib 1.5+ (scikit-learn's and the joblib launcher's) refuses, and
requires ``ray[default]``, boto3 and aiohttp for its AWS launcher. The config keys are those of
hydra-ray-launcher's local launcher, so its command lines work unchanged:

* ``hydra.launcher.ray.init``: keyword arguments of ``ray.init``; ``address: null`` starts a Ray
  instance on this machine for the sweep (and shuts it down after), ``address: HOST:6379`` (or
  ``auto``) connects to a running cluster (``ray start --head``);
* ``hydra.launcher.ray.remote``: options of ``ray.remote`` for every job (``num_cpus: 1``,
  ``num_gpus: 1`` for a GPU per job, ``max_retries``, ...).

Each task runs Hydra's ``run_job`` with the job's sweep config, in the launching folder when the worker
sees it (so relative paths, such as ``checkpoint_dir: checkpoints``, mean what they mean locally; on a
cluster of several machines, the sweep folder and the checkpoints must be on a file system every node
shares, as with SLURM). A job that ends the process (robench's one-line errors exit with code 2) comes
back as a failed job whose error the sweep raises, as the local launcher would.
"""

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class RayConf:
    init: Dict[str, Any] = field(default_factory=lambda: {"address": None})
    remote: Dict[str, Any] = field(default_factory=lambda: {"num_cpus": 1})


@dataclass
class RobenchRayLauncherConf:
    _target_: str = "hydra_plugins.robench_ray_launcher.ray_launcher.RobenchRayLauncher"
    ray: RayConf = field(default_factory=RayConf)


ConfigStore.instance().store(group="hydra/launcher", name="robench_ray", node=RobenchRayLauncherConf,
                             provider="robench")


def run_job_in_task(hydra_context: HydraContext, sweep_config: DictConfig, task_function: TaskFunction,
                    singleton_state: Dict[Any, Any], cwd: str) -> JobReturn:
    """One job, inside a Ray worker: Hydra's globals and singletons as the launching process had them,
    its folder, then ``run_job``. A SystemExit (a robench error's exit 2) becomes a failed JobReturn."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    if os.path.isdir(cwd):
        os.chdir(cwd)
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(sweep_config)
    try:
        return run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    except SystemExit as e:
        ret = JobReturn(overrides=list(sweep_config.hydra.overrides.task), cfg=sweep_config,
                        task_name=sweep_config.hydra.job.name, status=JobStatus.FAILED)
        ret.return_value = SystemExit(e.code)
        return ret


class RobenchRayLauncher(Launcher):
    def __init__(self, ray: Optional[DictConfig] = None, **_: Any) -> None:
        self.ray_cfg = ray
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray
        from hydra.core.singleton import Singleton
        from hydra.core.utils import configure_log, filter_overrides, setup_globals
        from omegaconf import open_dict

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        cfg = OmegaConf.to_container(self.ray_cfg, resolve=True) if self.ray_cfg is not None else {}
        init = {k: v for k, v in (cfg.get("init") or {}).items() if v is not None or k != "address"}
        remote = dict(cfg.get("remote") or {})
        started = False
        if not ray.is_initialized():
            init.setdefault("log_to_driver", True)
            ray.init(**init)
            started = "address" not in init
        log.info("Ray launcher: %d jobs on %s, sweep folder %s", len(job_overrides),
                 init.get("address") or "a Ray instance on this machine", sweep_dir)
        task = ray.remote(**remote)(run_job_in_task) if remote else ray.remote(run_job_in_task)
        state, cwd = Singleton.get_state(), os.getcwd()
        pending = []
        try:
            for k, overrides in enumerate(job_overrides):
                idx = initial_job_idx + k
                log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
                sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with open_dict(sweep_config):
                    sweep_config.hydra.job.id = f"ray_{idx}"
                    sweep_config.hydra.job.num = idx
                pending.append(task.remote(self.hydra_context, sweep_config, self.task_function, state, cwd))
            return [ray.get(p) for p in pending]
        finally:
            if started:
                ray.shutdown()
