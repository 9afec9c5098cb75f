"""What one evaluation run is, typed and frozen: the threat model (:class:`Budget`, with :class:`Norm` and
:class:`Access` as enums), the attack (:class:`AttackSpec` and what its class declares, :class:`AttackTraits`)
and the protocol options (:class:`RunSpec`).

A :class:`RunSpec` is built and validated once, whether it comes from a Hydra config
(:meth:`RunSpec.from_config`, the CLI's pre-validation and the attack job) or from
:func:`robench.evaluate`'s arguments (:meth:`RunSpec.create`); every rule about these values is decided
here, before anything is written. :func:`robench.evaluation.prepare.prepare_run` then turns it into
a plan, a referee and the evaluation protocols, for the CLI, the Python API and the end-of-training
evaluation alike.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, Mapping, Optional, Tuple

from robench.values import MAX_INT
from robench.errors import RobenchError


class Norm(str, Enum):
    """The budget's norm (a ``str`` enum: ``Norm.LINF == "linf"``)."""

    LINF = "linf"
    L2 = "l2"
    L0 = "l0"

    def __str__(self) -> str:
        return self.value


class Access(str, Enum):
    """What an attack may ask the oracle for: ``gradient`` (white-box), ``scores``, ``label``."""

    GRADIENT = "gradient"
    SCORES = "scores"
    LABEL = "label"

    def __str__(self) -> str:
        return self.value


#: norms a budget may name (an attack declares the subset it supports in ``Attack.norms``)
NORMS = tuple(n.value for n in Norm)
TARGET_MODES = ("random", "least_likely", "all")  # all: every other class (engine.expand_all_targets)


def _num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _plain_number(v: Any, key: str) -> Any:
    """A tensor or numpy scalar is not a config value: refuse it in one line instead of failing deep inside."""
    if hasattr(v, "shape") and not isinstance(v, (int, float)):
        raise RobenchError(f"{key} must be a plain Python number, got a {type(v).__name__}; pass float(value)")
    return v


@dataclass(frozen=True)
class Budget:
    """The threat model: ``norm`` (linf, l2, l0), ``eps`` (None: minimal-distortion attacks),
    ``max_queries`` per sample, ``targeted`` and its ``target`` mode (random, least_likely, all: every
    other class, one row per (sample, target), or a class index), ``checkpoints`` (query counts of the anytime curve; None: the default for
    minimal-distortion attacks). Every value is checked when the budget is made."""

    norm: Norm = Norm.LINF
    eps: Optional[float] = 0.3
    max_queries: int = 10_000
    targeted: bool = False
    target: Any = "random"
    checkpoints: Optional[Tuple[int, ...]] = None

    def __post_init__(self):
        norm = self.norm.value if isinstance(self.norm, Norm) else self.norm
        if norm not in NORMS:
            raise RobenchError(f"budget.norm must be one of {', '.join(NORMS)}, got '{self.norm}'")
        object.__setattr__(self, "norm", Norm(norm))
        eps = _plain_number(self.eps, "budget.eps")
        if eps is not None and (not _num(eps) or not math.isfinite(eps) or eps < 0):
            raise RobenchError(f"budget.eps must be a number >= 0 (or null for minimal-distortion attacks), got '{eps}'")
        if norm == "l0" and eps is not None and float(eps) != int(eps):
            raise RobenchError(f"budget.eps for the l0 norm is a count of changed input coordinates: give an integer, "
                               f"got '{eps}'")
        object.__setattr__(self, "eps", None if eps is None else float(eps))
        mq = _plain_number(self.max_queries, "budget.max_queries")
        if not _int(mq) or not 1 <= mq <= MAX_INT:
            raise RobenchError(f"budget.max_queries must be an integer >= 1 (at most 2**62), got '{mq}'")
        object.__setattr__(self, "max_queries", int(mq))
        if not isinstance(self.targeted, bool):
            raise RobenchError(f"budget.targeted must be true or false, got '{self.targeted}'")
        t = self.target
        if isinstance(t, bool) or not (t in TARGET_MODES or t == "given" or _int(t)):
            raise RobenchError(f"budget.target must be random, least_likely, all or a class index, got '{t}'")
        if _int(t):
            if t < 0:
                raise RobenchError(f"budget.target={t} is out of range: classes are numbered from 0")
            object.__setattr__(self, "target", int(t))
        cps = self.checkpoints
        if cps is not None:
            ok = not isinstance(cps, (str, bytes)) and hasattr(cps, "__iter__")
            cps = tuple(cps) if ok else ()
            ok = ok and len(cps) > 0 and all(_int(c) and 1 <= c <= mq for c in cps)
            if not ok:
                raise RobenchError(f"budget.checkpoints must be null or a list of query counts in 1..max_queries ({mq}), "
                                   f"e.g. [4000,8000,14000]; got '{self.checkpoints}'")
            object.__setattr__(self, "checkpoints", tuple(sorted({int(c) for c in cps})))

    @classmethod
    def from_mapping(cls, b: Any) -> "Budget":
        """A budget config node (``budget.*``) as a :class:`Budget` (unknown keys ignored: labels, comments)."""
        if not isinstance(b, Mapping):
            raise RobenchError(f"budget must be a budget config (e.g. budget=linf_0.3), got '{b}'")
        return cls(**{k: b[k] for k in ("norm", "eps", "max_queries", "targeted", "target", "checkpoints") if k in b})

    def check_classes(self, num_classes: Optional[int]) -> None:
        """A target class index exists in a dataset of ``num_classes`` classes."""
        t = self.target
        if self.targeted or _int(t):
            if _int(t) and num_classes is not None and not 0 <= t < num_classes:
                raise RobenchError(f"budget.target={t} is out of range: this dataset has classes 0..{num_classes - 1}")

    @property
    def label(self) -> str:
        """``linf_0.3`` (``_targeted`` added for targeted runs): the summary's ``budget``."""
        return f"{self.norm.value}_{self.eps}" + ("_targeted" if self.targeted else "")

    def as_dict(self) -> dict:
        return {"norm": self.norm.value, "eps": self.eps, "max_queries": self.max_queries, "targeted": self.targeted,
                "target": self.target, "checkpoints": None if self.checkpoints is None else list(self.checkpoints)}


EPS_POLICIES = ("any", "finite", "null")


@dataclass(frozen=True)
class AttackTraits:
    """What an attack declares about itself, read from its class (or, for an isolated attack, from the
    sandboxed child that built it): ``access``, ``minimizes_distortion``, ``eps_policy`` (``any``, ``finite``:
    needs an eps-ball, ``null``: runs without one), the budget ``norms`` it supports and what it
    ``requires`` beyond its view (robench/attacks/base.py)."""

    access: Access
    minimizes_distortion: bool = False
    eps_policy: str = "any"
    norms: Tuple[str, ...] = ("linf", "l2")
    requires: Tuple[str, ...] = ()
    layouts: Tuple[str, ...] = ("NCHW",)

    @classmethod
    def of(cls, obj: Any, name: str) -> "AttackTraits":
        """The traits an attack class (or instance) declares; a malformed declaration fails in one line."""
        from robench.attacks.base import CONTEXT_NEEDS

        access = getattr(obj, "access", None)
        if access not in tuple(a.value for a in Access):
            raise RobenchError(f"attack '{name}' declares access '{access}'; an attack declares gradient, scores or label")
        policy = getattr(obj, "eps_policy", "any")
        if policy not in EPS_POLICIES:
            raise RobenchError(f"attack '{name}' declares eps_policy '{policy}'; valid: {', '.join(EPS_POLICIES)}")
        norms = tuple(getattr(obj, "norms", ("linf", "l2")))
        if not norms or any(n not in NORMS for n in norms):
            raise RobenchError(f"attack '{name}' declares norms {norms}; valid: {', '.join(NORMS)}")
        req = tuple(getattr(obj, "requires", ()))
        if any(r not in CONTEXT_NEEDS for r in req):
            raise RobenchError(f"attack '{name}' requires {req}; an attack may require {', '.join(CONTEXT_NEEDS)}")
        layouts = tuple(getattr(obj, "layouts", ("NCHW",)))
        if not layouts or any(x not in ("NCHW", "NCT") for x in layouts):
            raise RobenchError(f"attack '{name}' declares layouts {layouts}; valid: NCHW, NCT")
        return cls(Access(access), bool(getattr(obj, "minimizes_distortion", False)), policy, norms, req, layouts)

    def check_layout(self, layout: str, name: str) -> None:
        """The attack handles inputs of this layout (robench/domain.py): decided here, before anything is written."""
        if layout not in self.layouts:
            kinds = {"NCHW": "images (N x C x H x W)", "NCT": "1-D signals (N x C x T)"}
            raise RobenchError(f"attack={name} works on {' and '.join(kinds[x] for x in self.layouts)}, not on "
                               f"{kinds.get(layout, layout)}; pick an attack for this input domain (robench list attacks)")

    def check(self, budget: Budget, name: str, isolate: bool) -> None:
        """Every rule on what the attack declares, decided here once: the budget's norm and eps
        (:meth:`check_budget`), and what an isolated attack may not have (gradient access, a surrogate)."""
        self.check_budget(budget, name)
        if isolate and self.access == Access.GRADIENT:
            raise RobenchError(f"isolate=true cannot run '{name}': gradient access runs the attack's loss "
                               f"function in the referee's process; isolate label- and score-based attacks")
        if isolate and "surrogate" in self.requires:
            raise RobenchError(f"isolate=true cannot run '{name}': it requires a surrogate model, which the "
                               f"sandbox cannot read; run it without isolate")
        if isolate and "build_set" in self.requires:
            raise RobenchError(f"isolate=true cannot run '{name}': it builds a shared perturbation on a build set "
                               f"(evaluation/protocols.py, Shared), which the sandbox cannot read; run it without isolate")

    def check_budget(self, budget: Budget, name: str) -> None:
        """The rule for ``budget.eps`` and ``budget.norm``, decided here only (before anything is written)."""
        if budget.norm.value not in self.norms:
            hint = " (e.g. budget=l0_24: at most 24 changed pixels)" if self.norms == ("l0",) else ""
            raise RobenchError(f"attack={name} supports budget.norm {' or '.join(self.norms)}, got "
                               f"'{budget.norm.value}'{hint}")
        if self.eps_policy == "finite" and budget.eps is None:
            raise RobenchError(f"attack={name} is an eps-bounded attack: set budget.eps to a number "
                               f"(budget.eps=null is for minimal-distortion attacks)")
        if self.eps_policy == "null" and budget.eps is not None:
            raise RobenchError(f"attack={name} runs without an eps-ball: set budget.eps=null (got {budget.eps})")


def freeze(v: Any) -> Any:
    """Plain, read-only copies of config values (mappings become read-only, lists tuples)."""
    if isinstance(v, Mapping):
        return MappingProxyType({str(k): freeze(x) for k, x in v.items()})
    if isinstance(v, (list, tuple)):
        return tuple(freeze(x) for x in v)
    return v


def thaw(v: Any) -> Any:
    """The plain Python value of a frozen one (for constructors and YAML)."""
    if isinstance(v, Mapping):
        return {k: thaw(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return [thaw(x) for x in v]
    return v


@dataclass(frozen=True)
class AttackSpec:
    """The attack: a registered ``name`` (or ``external`` with ``code``, a ``module:Class`` or
    ``file.py:Class`` reference), its validated constructor ``params``, ``batch_size`` (samples per
    oracle batch), and for gradient attacks ``bpda`` and ``eot_samples``."""

    name: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    batch_size: int = 1000
    bpda: bool = False
    eot_samples: int = 1
    code: Optional[str] = None

    @property
    def label(self) -> str:
        return self.code.rsplit(":", 1)[-1] if self.code else self.name


@dataclass(frozen=True)
class RunSpec:
    """One evaluation run, validated: the attack, the budget, the seed and the protocol options.

    ``correct_only``: attack only the originally correct samples; ``n_correct``: end the slice at its
    n-th correct sample; ``adaptive`` / ``adaptive_eot_samples``: the adaptive protocol; ``recheck_repeats``
    (None: 3 for a randomized victim, else 1) and ``confirm_on_sight`` (None: auto): the re-check;
    ``isolate``: the attack runs in a sandboxed child process; ``defense``: the defense config (recipe,
    input transformations, detector)."""

    attack: AttackSpec
    budget: Budget
    traits: AttackTraits
    seed: int = 0
    correct_only: bool = True
    n_correct: Optional[int] = None
    adaptive: bool = False
    adaptive_eot_samples: int = 10
    recheck_repeats: Optional[int] = None
    confirm_on_sight: Optional[bool] = None
    isolate: bool = False
    defense: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({"name": "none"}))
    shard: Optional[str] = None

    # ------------------------------------------------------------------ construction (validation, once)
    @classmethod
    def create(cls, attack: str, params: Optional[Mapping[str, Any]] = None, *, budget: Optional[Budget] = None,
               batch_size: Optional[int] = None, bpda: bool = False, eot_samples: int = 1, code: Optional[str] = None,
               seed: int = 0, correct_only: bool = True, n_correct: Optional[int] = None, adaptive: bool = False,
               adaptive_eot_samples: int = 10, recheck_repeats: Optional[int] = None,
               confirm_on_sight: Optional[bool] = None, isolate: bool = False,
               defense: Optional[Mapping[str, Any]] = None, shard: Optional[str] = None,
               traits: Optional[AttackTraits] = None) -> "RunSpec":
        """Validate every value (one line for any bad one) and build the spec. ``batch_size`` None: the
        attack's config default (``configs/attack/<name>.yaml``), as ``robench attack`` uses it."""
        from robench.values import check_bool, check_int, check_seed

        budget = budget if budget is not None else Budget()
        if not isinstance(budget, Budget):
            raise RobenchError(f"budget must be a robench.Budget, got {type(budget).__name__}")
        check_seed(_plain_number(seed, "seed"))
        for k, v in (("correct_only", correct_only), ("adaptive", adaptive), ("isolate", isolate),
                     ("attack.bpda", bpda)):
            check_bool(k, v)
        check_bool("confirm_on_sight", confirm_on_sight, null=True)
        check_int("n_correct", _plain_number(n_correct, "n_correct"), lo=1, null=True)
        check_int("recheck_repeats", _plain_number(recheck_repeats, "recheck_repeats"), lo=1, null=True,
                  hint=" (null: 3 for a randomized defense, else 1)")
        check_int("adaptive_eot_samples", _plain_number(adaptive_eot_samples, "adaptive_eot_samples"), lo=1)
        check_int("attack.eot_samples", _plain_number(eot_samples, "attack.eot_samples"), lo=1)
        if n_correct is not None and shard:
            raise RobenchError("n_correct cuts the slice after its n-th correct sample and cannot be combined with "
                               "dataset.shard: use dataset.n_samples with shards")
        if not isinstance(attack, str) or not attack:
            raise RobenchError(f"attack must be a registered attack name, got '{attack}'")
        if attack == "external" and not code:
            raise RobenchError("attack=external needs attack.code=pkg.module:Class or attack.code=path/to/file.py:Class "
                               "(the attack class to run)")
        if code is not None and attack != "external":
            raise RobenchError(f"attack.code is for attack=external, not attack={attack}")
        params = dict(params or {})
        if batch_size is None:  # what `robench attack attack=<name>` uses (its config's batch_size)
            from robench.registry import attack_batch_size

            batch_size = attack_batch_size(attack)
        check_int("attack.batch_size", _plain_number(batch_size, "attack.batch_size"), lo=1)
        aspec = AttackSpec(attack, freeze(params), int(batch_size), bool(bpda), int(eot_samples), code)
        if traits is None:
            traits = attack_traits(aspec, isolate)
        if traits is not None:
            traits.check(budget, aspec.label, bool(isolate))
        return cls(aspec, budget, traits, int(seed), bool(correct_only), n_correct, bool(adaptive),
                   int(adaptive_eot_samples), recheck_repeats, confirm_on_sight, bool(isolate),
                   freeze(dict(defense or {"name": "none"})), shard)

    @classmethod
    def from_config(cls, cfg: Any) -> "RunSpec":
        """The run a (resolved) ``robench attack`` config describes: every value checked (robench/config.py
        checks the dataset, model and defense groups; this the attack, the budget and the protocol)."""
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):  # its own keys only (a composed config may carry Hydra's node)
            c = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                 for k, v in ((k, cfg[k]) for k in cfg if k != "hydra")}
        else:
            c = cfg
        a = c.get("attack")
        if not isinstance(a, Mapping) or not isinstance(a.get("name"), str):
            raise RobenchError(f"attack must be an attack config with a name (e.g. attack=pgd), got '{a}'")
        return cls.create(a["name"], a.get("params"), budget=Budget.from_mapping(c.get("budget") or {}),
                          batch_size=a.get("batch_size", 1000), bpda=a.get("bpda", False),
                          eot_samples=a.get("eot_samples", 1), code=a.get("code"), seed=c.get("seed", 0),
                          correct_only=c.get("correct_only", True), n_correct=c.get("n_correct"),
                          adaptive=c.get("adaptive", False), adaptive_eot_samples=c.get("adaptive_eot_samples", 10),
                          recheck_repeats=c.get("recheck_repeats"), confirm_on_sight=c.get("confirm_on_sight"),
                          isolate=c.get("isolate", False), defense=c.get("defense") or {"name": "none"},
                          shard=(c.get("dataset") or {}).get("shard"))

    def referee_settings(self) -> dict:
        return {"norm": self.budget.norm.value, "eps": self.budget.eps, "max_queries": self.budget.max_queries}


def attack_traits(aspec: AttackSpec, isolate: bool) -> Optional[AttackTraits]:
    """The declared traits of the attack, with its parameters validated against its schema and, in process,
    by its constructor (constructors do no work; a composite attack's traits depend on its members, so they
    are read from the instance). None under ``isolate``: the attack is built in the sandbox only, which
    reports its traits (robench/referee/isolation); its parameters are checked here against the schema of a
    registered attack, and in the sandbox for a code reference."""
    from robench.registry import ATTACKS, Registry, instantiate, validate_params

    params = thaw(aspec.params)
    if aspec.code is not None:
        if isolate:
            return None
        from robench.models.weights import import_code

        cls = import_code(aspec.code, "attack.code", kind="attack")
        reg = Registry("attack")
        reg.register(aspec.name, cls)
        return AttackTraits.of(instantiate(reg, aspec.name, params, "attack", "attack.params"), aspec.label)
    if isolate:
        validate_params(ATTACKS, aspec.name, params, "attack", "attack.params")
        return None
    return AttackTraits.of(instantiate(ATTACKS, aspec.name, params, "attack", "attack.params"), aspec.name)
