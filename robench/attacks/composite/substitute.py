from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from robench.attacks.base import Attack, AttackView
from robench.attacks.composite.transfer import LastProposal
from robench.errors import RobenchError
from robench.geometry import geometry
from robench.referee.own_model import own_model_oracle
from robench.registry import ATTACKS

_SUBSTITUTE_KEYS = {"model", "params"}


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """On the CPU the substitute attack runs on one thread (training, augmentation and crafting): with 2
    threads the same seed gave different adversarial points in about a third of the tries (the contract's
    same-seed check; the crafting attack takes signs of the substitute's small gradients, so last-bit
    differences of multi-threaded kernels flip them), and an attack must give the same records for the same
    seed. Its label queries to the victim (made inside the run) run on that one thread too. A no-op on CUDA."""
    if torch.device(device).type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@ATTACKS.register("substitute")
class Substitute(Attack):
    """The substitute-model black-box attack of Papernot et al. [papernot2017] ([saha2020 §2.1.2,
    eq. 2.7]: train a proxy f' with argmin ℓ(f(x_i), f'(x_i)) on the victim's answers, after which "the
    problem reduces to the whitebox kind"; [zhao2020slides] "Transferability based attack"), label access.

    Per batch of the run, with the batch's oracle view:

    1. **Seed set** S_0: ``seed_size`` images of the *training* split, drawn uniformly and without
       labels (``requires`` ``class_images``; the paper's MNIST adversary holds 150 images from the
       test set, robench's comes from the training split so that it never overlaps the attacked
       images). The attacker sees nothing else of the dataset, never the victim's weights or gradients.
    2. **Substitute training** (Algorithm 1), for ρ = 0 .. ``rounds`` - 1: label the points of S_ρ not
       yet labelled with the victim (one label query each), train the substitute F on S_ρ with those
       labels for ``epochs`` epochs (Adam, lr ``lr``, batches of ``train_batch_size``; warm-started from the
       previous round), then augment by the Jacobian: S_{ρ+1} = S_ρ ∪ {x + λ_ρ · sign(J_F(x)[O(x)]) : x ∈ S_ρ}
       (the gradient of F's logit of the victim's label O(x), clipped to the input box [low, high] of the view), λ_ρ = λ, or with
       ``tau`` set the periodic step λ · (-1)^⌊ρ/τ⌋ of the paper's §6. The last round trains and does
       not augment.
    3. **Transfer**: the white-box ``attack`` (default FGSM, the paper's crafting attack for MNIST;
       ``{name, params}``) runs on the substitute under the run's threat model (a local oracle, its
       queries the attacker's own computation, reported as ``substitute.crafting_queries``), then ONE
       label query per sample on the victim, as robench's ``transfer`` attack does.

    **Which sample pays for a training query.** The oracle counts queries per sample, and a training
    query belongs to no attacked image: the batch's samples share the substitute, so they share its
    cost. Training queries are spread round robin over the batch's samples (row r of a labelling call
    is charged to the r-th sample modulo the batch, each sample keeping one query for its transfer
    query), so each sample is charged ⌈N / B⌉ or ⌊N / B⌋ of the N labels and the run's total is N per
    batch plus one per sample. ``batch_size`` in the attack's config therefore says how many images
    one substitute serves; at batch size B and per-sample budget Q a batch can label at most
    B · (Q - 1) points, and the augmentation stops where the budget does (the last set labelled is
    cut to what is affordable). The oracle judges every training query against the sample charged
    for it (an image far from that sample is never inside its ball), so the attack needs a finite
    ``budget.eps`` (``eps_policy`` finite): with ``eps: null`` any misclassified training image would
    count as an adversarial example of some sample. (The oracle does keep such an image as the
    charged sample's best adversarial point *outside* the ball, so in records.csv an unsuccessful
    sample's l2/linf columns may be a training image's distance; the summary's distortions are over
    successes only, which are always the transferred point inside the ball.)

    Defaults: λ = 0.1, ρ = 6 rounds and 150 seed images (the paper's MNIST setting: 150 · 2^5 = 4,800
    labels), FGSM with the budget's eps; the substitute is ``small_cnn`` (the paper's substitute
    architectures are not registered in robench), trained 10 epochs per round, Adam lr 1e-3, batch 128
    (robench's choices), normalised with the mean and standard deviation of its own seed images.

    ``summary.json`` gets ``substitute``: labels spent on training, per-sample training share, the
    substitute's agreement with the victim on its last training set, its success on the batch (the
    white-box attack against the substitute itself) and the number of points transferred.
    """

    access = "label"
    requires = ("class_images",)
    eps_policy = "finite"
    #: the contract and device tests (robench.testing.contract_params): a smaller substitute training, same attack
    contract_overrides = {"seed_size": 20, "rounds": 2, "epochs": 2}

    #: numeric ranges the registry checks before construction (robench.registry.validate_params)
    param_ranges = {"seed_size": ">=1", "rounds": ">=1", "lmbda": ">0", "epochs": ">=1", "lr": ">0",
                    "train_batch_size": ">=1", "crafting_max_queries": ">=1", "tau": ">=1"}

    def __init__(self, seed_size: int = 150, rounds: int = 6, lmbda: float = 0.1, tau: Optional[int] = None,
                 epochs: int = 10, lr: float = 1e-3, train_batch_size: int = 128,
                 substitute: Optional[Dict[str, Any]] = None, attack: Optional[Dict[str, Any]] = None,
                 crafting_max_queries: int = 100_000):
        from robench.registry import MODELS, instantiate

        if int(seed_size) < 1 or int(rounds) < 1 or int(epochs) < 1 or int(train_batch_size) < 1:
            raise RobenchError("substitute needs seed_size, rounds, epochs and train_batch_size >= 1")
        if not lmbda > 0 or not lr > 0:
            raise RobenchError(f"substitute needs lmbda > 0 and lr > 0 (got {lmbda}, {lr})")
        if tau is not None and int(tau) < 1:
            raise RobenchError(f"substitute tau must be >= 1 or null (no periodic step), got {tau}")
        s = dict(substitute or {})
        if set(s) - _SUBSTITUTE_KEYS:
            raise RobenchError(f"substitute: unknown substitute key(s) {', '.join(sorted(set(s) - _SUBSTITUTE_KEYS))}; "
                               f"valid: model, params")
        self.sub_model = s.get("model") or "small_cnn"
        MODELS.get(self.sub_model)  # unknown model: one line now
        self.sub_params = dict(s.get("params") or {})
        a = dict(attack or {"name": "fgsm"})
        if not isinstance(a.get("name"), str) or set(a) - {"name", "params"}:
            raise RobenchError(f"substitute: attack must be {{name: <white-box attack>, params: {{...}}}}, got {a}")
        if a["name"] in ("transfer", "ensemble", "substitute"):
            raise RobenchError(f"substitute: the crafting attack must be a white-box attack, not '{a['name']}'")
        self.inner_name = a["name"]
        self.inner = instantiate(ATTACKS, a["name"], a.get("params"), "attack")
        # the run's norms are those the crafting attack handles (robench/evaluation/spec.py checks them)
        self.norms = self.inner.norms
        if self.inner.access != "gradient":
            raise RobenchError(f"substitute: crafting attack '{a['name']}' has access '{self.inner.access}'; "
                               f"use a white-box (gradient) attack")
        self.seed_size, self.rounds, self.lmbda, self.tau = int(seed_size), int(rounds), float(lmbda), tau
        self.epochs, self.lr, self.bs = int(epochs), float(lr), int(train_batch_size)
        self.crafting_max_queries = int(crafting_max_queries)
        self.images = None
        self.stats = {"substitute_model": self.sub_model, "crafting_attack": self.inner_name, "batches": 0,
                      "samples": 0, "training_labels": 0, "transferred": 0, "substitute_success": 0, "crafting_queries": 0,
                      "agreement": []}

    def prepare(self, context) -> None:
        if context.class_images is None:
            raise RobenchError("substitute: its seed set comes from the training split; run it where the engine has one")
        self.images = context.class_images

    # ------------------------------------------------------------------ helpers
    def _charge(self, n_rows: int, idx: torch.Tensor, start: int) -> torch.Tensor:
        """The sample charged for each of ``n_rows`` training queries: round robin over ``idx`` from ``start``."""
        return idx[(torch.arange(n_rows, device=idx.device) + start) % len(idx)]

    def _build(self, seeds: torch.Tensor, num_classes: int, gen: torch.Generator) -> nn.Module:
        from robench.models import build_model

        dims = [0] + list(range(2, seeds.dim()))
        mean, std = seeds.mean(dims).tolist(), seeds.std(dims).clamp_min(1e-3).tolist()
        spec = SimpleNamespace(num_classes=num_classes, shape=tuple(seeds.shape[1:]), mean=mean, std=std)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2 ** 31 - 1, (1,), generator=gen, device=gen.device)))
            return build_model(self.sub_model, spec, self.sub_params)

    def _train(self, model: nn.Module, opt, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> None:
        model.train()
        cpu = torch.Generator().manual_seed(int(torch.randint(2 ** 31 - 1, (1,), generator=gen, device=gen.device)))
        with torch.enable_grad():
            for _ in range(self.epochs):
                order = torch.randperm(len(x), generator=cpu).to(x.device)
                for s in range(0, len(x), self.bs):
                    i = order[s:s + self.bs]
                    loss = F.cross_entropy(model(x[i]), y[i])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        model.eval()

    @staticmethod
    def _jacobian_sign(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """sign(∂F_{O(x)}(x) / ∂x): the Jacobian row of the victim's label, batched."""
        out = []
        for s in range(0, len(x), 512):
            xb = x[s:s + 512].detach().requires_grad_(True)
            with torch.enable_grad():
                z = model(xb).gather(1, y[s:s + 512, None]).sum()
                g, = torch.autograd.grad(z, xb)
            out.append(g.sign())
        return torch.cat(out)

    # ------------------------------------------------------------------ the attack
    def run(self, oracle: AttackView, generator: torch.Generator) -> None:
        with _one_cpu_thread(oracle.x0.device):
            self._run(oracle, generator)

    def _run(self, oracle: AttackView, generator: torch.Generator) -> None:
        if oracle.eps is None:
            raise RobenchError("substitute is an eps-bounded attack (its training queries are judged against the "
                               "samples that pay for them): set budget.eps to a number")
        if self.images is None:
            raise RobenchError("substitute: no training images (the engine hands them over in prepare())")
        idx = oracle.active_indices()
        if len(idx) == 0:
            return
        dev = oracle.x0.device
        K = oracle.num_classes
        self.stats["samples"] += len(idx)
        seeds = self.images.sample(self.seed_size, generator).to(dev)
        model = self._build(seeds, K, generator).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        # every sample keeps one query for its transfer query
        affordable = int((oracle.remaining[idx] - 1).clamp_min(0).sum())
        xs = seeds
        ys = torch.empty(0, dtype=torch.long, device=dev)
        charged = 0
        for rho in range(self.rounds):
            new = xs[len(ys):]
            new = new[:max(0, affordable - charged)]
            if len(new):
                lab = oracle.labels(new, self._charge(len(new), idx, charged))
                charged += len(new)
                ok = lab >= 0
                xs = torch.cat([xs[:len(ys)], new[ok]])
                ys = torch.cat([ys, lab[ok]])
            else:
                xs = xs[:len(ys)]
            if len(ys) == 0:
                break
            self._train(model, opt, xs, ys, generator)
            if rho == self.rounds - 1 or charged >= affordable:
                break
            lam = self.lmbda * (-1) ** (rho // int(self.tau)) if self.tau else self.lmbda
            xs = torch.cat([xs, (xs + lam * self._jacobian_sign(model, xs, ys)).clamp(oracle.low, oracle.high)])
        with torch.no_grad():
            agree = float((model(xs[:len(ys)]).argmax(1) == ys).float().mean()) if len(ys) else float("nan")
        # transfer: the white-box attack on the substitute, then one label query per sample on the victim
        for p in model.parameters():
            p.requires_grad_(False)
        idx = oracle.active_indices()
        if len(idx) == 0:
            return
        x0, y, t = oracle.x0[idx], oracle.y[idx], oracle.targets
        last = LastProposal(x0)
        view, finalize = own_model_oracle(model, x0, y, norm=oracle.norm, eps=oracle.eps,
                                          max_queries=self.crafting_max_queries, num_classes=K,
                                          targets=None if t is None else t[idx], observe=last,
                                          box=(oracle.low, oracle.high))
        self.inner.run(view, generator)
        res = finalize()
        best = res.best_x.to(dev)
        x = last.x
        if self.inner.minimizes_distortion:
            x = torch.where(res.adversarial.to(dev).view(-1, *[1] * (x0.dim() - 1)), best, last.x)
        oracle.labels(geometry(oracle.norm).project_point(x, x0, oracle.eps, (oracle.low, oracle.high)), idx)
        st = self.stats
        st["batches"] += 1
        st["training_labels"] += charged
        st["transferred"] += len(idx)
        st["substitute_success"] += int(res.success.sum())
        st["crafting_queries"] += int(res.queries.sum())
        st["agreement"].append(agree)

    def summary_extra(self) -> Dict[str, Any]:
        s = dict(self.stats)
        agree = s.pop("agreement")
        s["substitute_agreement"] = sum(agree) / len(agree) if agree else float("nan")
        s["training_labels_per_sample"] = s["training_labels"] / s["samples"] if s["samples"] else float("nan")
        s["substitute_success_rate"] = s["substitute_success"] / s["transferred"] if s["transferred"] else float("nan")
        return {"substitute": s}
