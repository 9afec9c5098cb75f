"""``experiment=robustbench_eval``: the eps of RobustBench's threat models as config resolvers, and a
Hydra callback that prints the run's result in RobustBench's terms [croce2021robustbench]."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

#: RobustBench's eps per threat model (CIFAR-10 leaderboards: Linf 8/255, L2 0.5)
THREAT_EPS = {"Linf": ("linf", 8 / 255), "L2": ("l2", 0.5)}


def _threat(tm: Any, i: int) -> Any:
    # an unknown threat model (e.g. corruptions, not an Lp ball) comes back as is: validate_budget rejects it in one line
    return THREAT_EPS[str(tm)][i] if str(tm) in THREAT_EPS else f"{tm} (robustbench_eval covers Linf and L2)"


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("robench_threat_norm", lambda tm: _threat(tm, 0), replace=True)
    OmegaConf.register_new_resolver("robench_threat_eps", lambda tm: _threat(tm, 1) if str(tm) in THREAT_EPS else None,
                                    replace=True)


_register_resolvers()


def robustbench_line(summary: Mapping[str, Any]) -> str:
    """The result in RobustBench's terms: clean and robust accuracy over the n evaluated images, at eps."""
    eps = summary.get("eps")
    eps_s = f"{eps:.6g}" if isinstance(eps, (int, float)) else str(eps)
    if isinstance(eps, float) and abs(eps * 255 - round(eps * 255)) < 1e-6 and summary.get("norm") == "linf":
        eps_s = f"{round(eps * 255)}/255"
    name = summary.get("model_name") or summary.get("model")
    aa = (summary.get("attack_extra") or {}).get("autoattack")  # attack=autoattack: the version that ran
    attack = f"AutoAttack {aa['version']}" if isinstance(aa, Mapping) and aa.get("version") else summary.get("attack")
    return (f"RobustBench-style evaluation of {name} ({summary.get('model_source', '?')}) on {summary.get('dataset')}: "
            f"clean accuracy {100 * summary['clean_accuracy']:.2f}%, robust accuracy "
            f"{100 * summary['robust_accuracy']:.2f}% ({attack}, {summary.get('norm')} eps={eps_s}, "
            f"n={summary.get('n_samples')})")


try:
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object  # type: ignore[misc,assignment]


class RobustBenchReport(_Callback):  # type: ignore[misc]
    """Hydra callback of experiment=robustbench_eval: prints :func:`robustbench_line` from the run's summary.json."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        import json

        try:
            out = Path(str(job_return.hydra_cfg.hydra.runtime.output_dir))
        except Exception:
            return
        f = out / "summary.json"
        if f.exists() and not config.get("quiet", False):
            print(robustbench_line(json.loads(f.read_text())), flush=True)
