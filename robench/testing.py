"""The attack contract, for robench's own tests and for plugin authors (README, "Adding a plugin").

:func:`check_attack` runs an attack through robench's engine on a few inputs of a victim with a tiny
budget, behind a model wrapper that sees every row the victim evaluates, and checks the contract:

* the budget is never exceeded, and every row the victim evaluated during the attack is a counted query;
* no answer above the declared access level (the oracle view raises AccessError);
* every queried row lies in the input domain's box (images [0, 1], signals [-1, 1]);
* the same seed gives the same records, and a subset of the samples (some rows not attacked) works;
* every reported success is certified: the best point is misclassified, in the box and inside the ball;
* the declarations are true: the attack runs under every budget norm it declares (``norms``), with and
  without an eps-ball as its ``eps_policy`` says, and on every input layout it declares (``layouts``);
* an attack that builds one shared perturbation (``requires`` "build_set", robench/evaluation/shared.py)
  builds it on at most :data:`BUILD_LIMIT` of the ``train`` pairs (the test inputs when none are given)
  through its guarded build oracle, each build image within the budget and every evaluated row counted,
  and the referee's evaluation of it then meets the contract above.

A plugin's own test::

    from robench.testing import check_attack, tiny_victim

    def test_my_attack_meets_the_contract():
        model, x, y, train = tiny_victim()
        check_attack(lambda: MyAttack(), model, x, y, train=train)

The setup an attack needs comes from its declared attributes (``requires``, ``eps_policy``, ``norms``,
``layouts``), never from its name.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence, Tuple

import torch

from robench.attacks.base import Attack, AttackContext, ClassImages
from robench.domain import AUDIO, IMAGE, Domain
from robench.evaluation.engine import Plan, Referee, prepare_attack, run_all
from robench.geometry import distortion

MAX_QUERIES, EPS, TOL = 20, 0.3, 1e-5
#: build images a shared-perturbation attack gets in the contract (its mechanics, not its strength)
BUILD_LIMIT = 12


class Watched(torch.nn.Module):
    """The victim behind a counter: rows evaluated while ``on``, and any row outside the box.

    A row evaluated without gradients counts once; a row evaluated with gradients counts once per backward
    pass through its logits (a tensor hook), so the m gradients :meth:`~robench.referee.oracle.Oracle.jacobian`
    takes from one forward pass count as the m queries they are.
    """

    def __init__(self, model, box=(0.0, 1.0)):
        super().__init__()
        self.model, self.box, self.on, self.rows, self.out_of_box = model, box, False, 0, 0

    def _backward(self, n: int) -> None:
        self.rows += n

    def forward(self, x):
        out = self.model(x)
        if self.on:
            lo, hi = self.box
            self.out_of_box += int(((x < lo - TOL) | (x > hi + TOL)).flatten(1).any(1).sum())
            if out.requires_grad:
                n = x.shape[0]
                out.register_hook(lambda g: self._backward(n))
            else:
                self.rows += x.shape[0]
        return out


class Counted(Attack):
    """Runs an attack with the watcher switched on (the oracle's final re-check is not a query)."""

    def __init__(self, inner, watcher):
        self.inner, self.watcher = inner, watcher
        self.access, self.minimizes_distortion = inner.access, inner.minimizes_distortion

    def run(self, oracle, generator):
        self.watcher.on = True
        try:
            self.inner.run(oracle, generator)
        finally:
            self.watcher.on = False


def _context(attack, victim, train) -> dict:
    needs = {"class_images": lambda: {"class_images": ClassImages(train) if train is not None else None},
             "surrogate": lambda: {"load_surrogate": lambda spec: (copy.deepcopy(victim), "victim copy", "-")},
             "build_set": lambda: {}}  # the shared protocol's build set: see _shared
    ctx = {}
    for r in getattr(attack, "requires", ()):
        ctx.update(needs[r]())
    return ctx


def budgets(attack) -> list:
    """Every (norm, eps) the attack's declarations admit; the first is the contract's main budget."""
    policy = getattr(attack, "eps_policy", "any")
    epss = {"any": [EPS, None], "finite": [EPS], "null": [None]}[policy]
    out = []
    for norm in getattr(attack, "norms", ("linf", "l2")):
        for eps in epss:
            e = eps if eps is None or norm != "l0" else 8.0
            if norm == "l2" and eps is not None:
                e = 2.0
            out.append((norm, e))
    return out


def run_once(make: Callable[[], Attack], victim, x, y, attacked, *, norm="linf", eps: Optional[float] = EPS, seed=0,
             train=None, domain: Domain = IMAGE, max_queries: int = MAX_QUERIES):
    """The attack through the engine (batches of 8) behind a :class:`Watched` victim: (outcomes, watcher)."""
    attack = make()
    prepare_attack(attack, AttackContext(device=torch.device("cpu"), **_context(attack, victim, train)))
    watcher = Watched(victim, domain.box)
    k = int(victim(x[:1]).shape[1])
    referee = Referee(access=attack.access, norm=norm, eps=eps, max_queries=max_queries, num_classes=k,
                      stop_on_success=not attack.minimizes_distortion, box=domain.box)
    if "build_set" in getattr(attack, "requires", ()):
        attack = _shared(attack, watcher, x, y, train, referee, seed)
    outs = run_all(Counted(attack, watcher), watcher, Plan.contiguous(x, y, None, attacked, 8, seed), referee, "cpu")
    return outs, watcher


def _shared(attack, watcher: Watched, x, y, train, referee: Referee, seed: int):
    """The build phase of a shared-perturbation attack, checked (the build oracle's counts against the rows
    the victim evaluated, each build image within its budget, every row in the box); returns the referee's
    :class:`~robench.evaluation.shared.ApplyShared` holding the perturbation, which the contract then runs."""
    from types import SimpleNamespace

    from robench.evaluation.shared import ApplyShared, run_build, select_build_set

    pairs = train if train is not None else torch.utils.data.TensorDataset(x, y)
    splits = SimpleNamespace(train=pairs, test=pairs)
    build = select_build_set(attack, splits, watcher, "cpu", None, limit=BUILD_LIMIT)
    watcher.rows = watcher.out_of_box = 0
    watcher.on = True
    try:
        out = run_build(attack, watcher, build, referee, "cpu", seed, type(attack).__name__)
    finally:
        watcher.on = False
    assert watcher.out_of_box == 0, f"{watcher.out_of_box} build rows outside the box"
    assert int(out.queries.max()) <= referee.max_queries, f"build budget exceeded: {out.queries.tolist()}"
    assert watcher.rows == int(out.queries.sum()), \
        f"build: victim evaluated {watcher.rows} rows, oracle counted {int(out.queries.sum())}"
    watcher.rows = 0
    apply = ApplyShared(attack, type(attack).__name__)
    apply.perturbation = out.perturbation
    return apply


def check_once(make, victim, x, y, *, norm, eps, train=None, domain: Domain = IMAGE, repeat: bool = True,
               max_queries: int = MAX_QUERIES):
    """The contract on one budget (``repeat``: also determinism and a subset of the samples)."""
    n = len(y)
    kw = dict(norm=norm, eps=eps, train=train, domain=domain, max_queries=max_queries)
    outs, watcher = run_once(make, victim, x, y, torch.ones(n, dtype=torch.bool), **kw)
    res = outs[0].result
    lo, hi = domain.box
    where = f"({norm}, eps={eps}, {domain.layout})"
    assert watcher.out_of_box == 0, f"{watcher.out_of_box} queried rows outside [{lo}, {hi}] {where}"
    assert int(res.queries.max()) <= max_queries, f"budget exceeded: {res.queries.tolist()} {where}"
    assert watcher.rows == int(res.queries.sum()), \
        f"victim evaluated {watcher.rows} rows, oracle counted {int(res.queries.sum())} {where}"
    with torch.no_grad():
        pred = victim(res.best_x).argmax(1)
    for j in res.success.nonzero().flatten().tolist():  # every success certified by a fresh look
        assert pred[j] != y[j], f"sample {j}: success reported but the best point is classified as its label {where}"
        assert lo <= float(res.best_x[j].min()) and float(res.best_x[j].max()) <= hi
        if eps is not None:
            assert float(distortion((res.best_x[j] - x[j])[None], norm)) <= eps + TOL
    if not repeat:
        return res
    again, _ = run_once(make, victim, x, y, torch.ones(n, dtype=torch.bool), **kw)
    r2 = again[0].result
    for k in ("success", "queries", "grad_queries", "queries_at_success", "best_x"):
        assert torch.equal(getattr(res, k), getattr(r2, k)), f"same seed, different {k} {where}"
    subset = torch.tensor([i % 2 == 0 for i in range(n)])
    sub, w3 = run_once(make, victim, x, y, subset, **kw)
    assert sub[0].rows.tolist() == subset.nonzero().flatten().tolist() and w3.out_of_box == 0
    assert int(sub[0].result.queries.max()) <= max_queries and w3.rows == int(sub[0].result.queries.sum())
    return res


def check_attack(make: Callable[[], Attack], victim, x, y, *, train=None, signal: Optional[Tuple] = None,
                 max_queries: int = MAX_QUERIES) -> None:
    """The whole contract (see the module docstring): the main budget with determinism and subsets, then
    every other budget and layout the attack declares once. ``train``: (input, label) pairs for attacks
    that require class images; ``signal``: (victim, x, y, train) over N x C x T inputs in [-1, 1], for an
    attack that declares the ``NCT`` layout (default: :func:`tiny_signal_victim`)."""
    attack = make()
    combos = budgets(attack)
    layouts = getattr(attack, "layouts", ("NCHW",))
    for i, (norm, eps) in enumerate(combos):
        if "NCHW" in layouts:
            check_once(make, victim, x, y, norm=norm, eps=eps, train=train, repeat=i == 0, max_queries=max_queries)
    if "NCT" in layouts:
        sv, sx, sy, st = signal if signal is not None else tiny_signal_victim()
        norm, eps = combos[0]
        check_once(make, sv, sx, sy, norm=norm, eps=eps if eps is None or norm != "linf" else 0.3, train=st,
                   domain=AUDIO, repeat=True, max_queries=max_queries)


# ---------------------------------------------------------------------- ready for an accelerator
#: queries per sample of a device check: enough for every shipped attack to reach its main loop
DEVICE_QUERIES = 300


def device_problems(make: Callable[[], Attack], victim, x, y, *, norm: str = "linf", eps: Optional[float] = EPS,
                    targets: Optional[torch.Tensor] = None, train=None, domain: Domain = IMAGE,
                    max_queries: int = DEVICE_QUERIES, eot_samples: int = 1) -> list:
    """One run of the attack through the engine under the simulated second device
    (:mod:`robench.device_check`): the slice, its targets and the training images are host data, as in a
    real run, the batch goes to the "device" the engine names. Returns the problems found (one line each:
    where a host tensor or generator met the batch's device)."""
    from robench.device_check import HostDataset, mark_host, virtual_device

    dev = torch.device("cpu")  # a torch.device, as the engine gets it: the simulated accelerator
    attack = make()
    ctx = _context(attack, victim, None if train is None else HostDataset(train))
    prepare_attack(attack, AttackContext(device=dev, **ctx))
    k = int(victim(x[:1]).shape[1])
    referee = Referee(access=attack.access, norm=norm, eps=eps, max_queries=max_queries, num_classes=k,
                      stop_on_success=not attack.minimizes_distortion, box=domain.box,
                      eot_samples=eot_samples if attack.access != "label" else 1)
    shared = "build_set" in getattr(attack, "requires", ())
    if shared and targets is not None:  # a shared perturbation has one target class
        targets = torch.full_like(targets, int(targets[0]))
    host = [mark_host(t.clone(), "the engine's slice (host)") for t in (x, y)]
    t = None if targets is None else mark_host(targets.clone(), "the run's targets (host)")
    attacked = torch.ones(len(y), dtype=torch.bool) if targets is None or not shared else y != targets
    plan = Plan.contiguous(host[0], host[1], t, attacked, 8, 0)
    with virtual_device() as vd:
        if shared:  # the build phase over host build images, then the referee's evaluation (evaluation/shared.py)
            from types import SimpleNamespace

            from robench.evaluation.shared import ApplyShared, run_build, select_build_set

            pairs = HostDataset(train if train is not None else torch.utils.data.TensorDataset(x, y))
            target = None if targets is None else int(targets[0])
            build = select_build_set(attack, SimpleNamespace(train=pairs, test=pairs), victim, dev, target,
                                     limit=BUILD_LIMIT)
            out = run_build(attack, victim, build, referee, dev, 0, type(attack).__name__, target)
            attack = ApplyShared(attack, type(attack).__name__)
            attack.perturbation = out.perturbation
        run_all(attack, victim, plan, referee, dev)
    return vd.problems


def check_devices(make: Callable[[], Attack], victim, x, y, *, train=None, signal: Optional[Tuple] = None,
                  max_queries: int = DEVICE_QUERIES) -> None:
    """The attack is ready for an accelerator: under the simulated second device (robench/device_check.py)
    no tensor or generator made on the host meets the batch, for every budget norm it declares (its first
    eps policy), untargeted and targeted, and on every input layout it declares. Raises AssertionError
    listing each site (file:line, and where the host tensor was made)."""
    attack = make()
    combos, seen = [], set()
    for norm, eps in budgets(attack):
        if norm not in seen:
            seen.add(norm)
            combos.append((norm, eps))
    layouts = getattr(attack, "layouts", ("NCHW",))
    runs = []
    if "NCHW" in layouts:
        k = int(victim(x[:1]).shape[1])
        for i, (norm, eps) in enumerate(combos):
            runs.append((victim, x, y, train, IMAGE, norm, eps, None))
            if i == 0:
                runs.append((victim, x, y, train, IMAGE, norm, eps, (y + 1) % k))
    if "NCT" in layouts:
        sv, sx, sy, st = signal if signal is not None else tiny_signal_victim()
        norm, eps = combos[0]
        runs.append((sv, sx, sy, st, AUDIO, norm, eps if eps is None or norm != "linf" else 0.3, None))
    problems = []
    for i, (v, xx, yy, tr, dom, norm, eps, t) in enumerate(runs):  # the first run deep, the others to their loops
        for p in device_problems(make, v, xx, yy, norm=norm, eps=eps, targets=t, train=tr, domain=dom,
                                 max_queries=max_queries if i == 0 else max(1, max_queries // 4)):
            line = f"{p}  [{norm}, eps={eps}, {'targeted' if t is not None else 'untargeted'}, {dom.layout}]"
            problems.append(line)
    assert not problems, "a GPU run would fail here:\n" + "\n".join(problems)


# ---------------------------------------------------------------------- small victims, trained in seconds
def _fit(model, x, y, steps: int, lr: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        i = torch.randint(0, len(x), (64,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
    model.eval()


def tiny_victim(n_test: int = 3, seed: int = 0):
    """(model, x, y, train): a small MLP on the embedded MNIST subset (a few seconds on a CPU), ``n_test``
    correctly classified test images, and the training pairs (for attacks that draw class images)."""
    from omegaconf import OmegaConf

    from robench.data import eval_slice, load_dataset
    from robench.registry import configs_dir

    splits = load_dataset(OmegaConf.load(configs_dir() / "dataset" / "mnist.yaml"))
    xs, ys = zip(*(splits.train[i][:2] for i in range(2000)))
    xt, yt = torch.stack(xs).float(), torch.as_tensor(ys)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    _fit(model, xt, yt, 300, 3e-3, seed)
    _, x, y = eval_slice(splits, 50)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok][:n_test], y[ok][:n_test], splits.train


def signal_data(n_per_class: int = 48, classes: int = 4, length: int = 256, seed: int = 0):
    """Synthetic 1-D signals in [-1, 1] (N x 1 x T): class c is a sine of frequency 4 (c + 1) cycles with a
    random phase and amplitude 0.5, plus Gaussian noise of std 0.1, clipped to [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length).float() / length
    xs, ys = [], []
    for c in range(classes):
        phase = torch.rand(n_per_class, 1, generator=g) * 6.283
        s = 0.5 * torch.sin(2 * torch.pi * 4 * (c + 1) * t[None] + phase) + 0.1 * torch.randn(n_per_class, length,
                                                                                             generator=g)
        xs.append(s.clamp(-1, 1)[:, None])
        ys.append(torch.full((n_per_class,), c))
    x, y = torch.cat(xs), torch.cat(ys)
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


def tiny_signal_victim(n_test: int = 3, seed: int = 0, classes: int = 4):
    """(model, x, y, train) over synthetic 1-D signals in [-1, 1] (:func:`signal_data`, ``classes`` classes):
    a small 1-D CNN trained in about a second, ``n_test`` correctly classified held-out signals, the
    training pairs."""
    x, y = signal_data(classes=classes, seed=seed)
    cut = len(y) * 150 // 192
    xt, yt, xe, ye = x[:cut], y[:cut], x[cut:], y[cut:]
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 8, 9, padding=4), torch.nn.ReLU(), torch.nn.MaxPool1d(4),
                                torch.nn.Conv1d(8, 8, 9, padding=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(8),
                                torch.nn.Flatten(), torch.nn.Linear(64, classes))
    _fit(model, xt, yt, 200, 1e-2, seed)
    with torch.no_grad():
        ok = model(xe).argmax(1) == ye
    return model, xe[ok][:n_test], ye[ok][:n_test], torch.utils.data.TensorDataset(xt, yt)


def contract_params(name: str) -> dict:
    """An attack's shipped constructor parameters (configs/attack/<name>.yaml), as the CLI composes them,
    with the attack class's ``contract_overrides`` on top: settings of its own preparation that do not
    change what it does per query but cost seconds at the shipped size (AutoZOOM's autoencoder epochs)."""
    from omegaconf import OmegaConf

    from robench.registry import ATTACKS, config_dirs

    params: dict = {}
    for d in config_dirs():
        f = d / "attack" / f"{name}.yaml"
        if f.exists():
            params = OmegaConf.to_container(OmegaConf.load(f), resolve=True).get("params") or {}
            break
    cls = ATTACKS.get(name) if name in ATTACKS.names() else None
    return {**params, **dict(getattr(cls, "contract_overrides", None) or {})}


__all__: Sequence[str] = ("check_attack", "check_once", "run_once", "check_devices", "device_problems", "tiny_victim", "tiny_signal_victim",
                          "signal_data", "contract_params", "budgets", "Watched", "Counted")
