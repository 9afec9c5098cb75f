"""Model surgery for the adversarial-masking chapter of [cheng2021 §6]: swap a model's batch-norm
layers for conditional ones whose rescaling (γ, β) is a per-example combination of k learned sets.

BN as rescaling [cheng2021 §6.1, (6.1)]: O = γ · (I − μ) / √(σ² + ε) + β. A
:class:`ConditionalBatchNorm` keeps k rows of (γ, β) (``weight``, ``bias``: (k, C)) and a *code*
u (per example (B, k), or one (k,) for the whole batch): γ_i = Σ_j u_ij w_j, β_i = Σ_j u_ij w'_j,
the low-rank form of RobMask [cheng2021 §6.3, (6.2)]. The same module serves

* RobMask (k = 2, one set of running statistics, u = Encode(ε) = [1 − ε/ε_max, ε/ε_max]);
* AdvProp [xie2020advprop] (k = 2, one-hot codes, a set of running statistics per branch:
  ``n_stats = 2``; the branch is the code's largest entry);
* BN fine-tuning and the masking interpolation of [cheng2021 §6.2] (row 0 the original γ, β, row
  1 the fine-tuned γ′, β′; the code [p, 1 − p] gives γ̂ = pγ + (1 − p)γ′, β̂ likewise, Table 6.2).

The code is a plain attribute (not in the state dict): :func:`set_code` sets it on every
conditional layer, :func:`tell_eps` encodes an eps. :func:`condition_bn` works in place on any model
with ``nn.BatchNorm1d/2d/3d`` layers (every registered architecture that has BN, and ``small_cnn_bn``)
and records what it did in ``model.robench_surgery``; checkpoints carry that record
(robench/models/checkpoint.py), so loading re-applies the surgery before the weights.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from robench.errors import RobenchError


class ConditionalBatchNorm(nn.Module):
    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, k: int = 2, n_stats: int = 1, eps_max: float = 1.0):
        super().__init__()
        c = bn.num_features
        w = bn.weight.detach().clone() if bn.affine else torch.ones(c)
        b = bn.bias.detach().clone() if bn.affine else torch.zeros(c)
        self.weight = nn.Parameter(w.repeat(k, 1))
        self.bias = nn.Parameter(b.repeat(k, 1))
        rm = bn.running_mean if bn.running_mean is not None else torch.zeros(c)
        rv = bn.running_var if bn.running_var is not None else torch.ones(c)
        self.register_buffer("running_mean", rm.detach().clone().repeat(n_stats, 1))
        self.register_buffer("running_var", rv.detach().clone().repeat(n_stats, 1))
        self.num_features, self.k, self.n_stats, self.eps_max = c, int(k), int(n_stats), float(eps_max)
        self.bn_eps, self.momentum = bn.eps, (bn.momentum if bn.momentum is not None else 0.1)
        self.freeze_stats = False   # True: normalise with the running statistics even in train mode
        self.code: Optional[torch.Tensor] = None   # None: [1, 0, ..., 0]
        self.train(bn.training)

    def extra_repr(self) -> str:
        return f"{self.num_features}, k={self.k}, n_stats={self.n_stats}, eps_max={self.eps_max}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = self.code
        if code is None:
            code = torch.zeros(self.k)
            code[0] = 1.0
        code = code.to(x.device, torch.float32)
        s = int(code.reshape(-1, self.k)[0].argmax()) if self.n_stats > 1 else 0
        train = self.training and not self.freeze_stats
        xh = F.batch_norm(x, self.running_mean[s], self.running_var[s], None, None, train, self.momentum, self.bn_eps)
        g, b = code @ self.weight, code @ self.bias          # (C,) or (B, C)
        shape = (-1 if code.dim() > 1 else 1, self.num_features) + (1,) * (x.dim() - 2)
        return xh * g.view(shape).to(xh.dtype) + b.view(shape).to(xh.dtype)


def conditional_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, ConditionalBatchNorm)]


def condition_bn(model: nn.Module, k: int = 2, n_stats: int = 1, eps_max: float = 1.0) -> nn.Module:
    """Replace every BatchNorm layer of ``model`` (in place) by a :class:`ConditionalBatchNorm`
    initialised from it (all k rows = its γ, β; all statistics sets = its running statistics)."""
    if int(k) < 1 or int(n_stats) not in (1, int(k)):
        raise RobenchError(f"conditional BN needs k >= 1 and n_stats 1 or k (got k={k}, n_stats={n_stats})")
    if conditional_layers(model):
        raise RobenchError("the model's batch-norm layers are conditional already")
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, ConditionalBatchNorm(child, k, n_stats, eps_max))
                n += 1
    if n == 0:
        raise RobenchError(f"{type(model).__name__} has no BatchNorm layer to condition (on MNIST use model=small_cnn_bn)")
    model.robench_surgery = {"kind": "conditional_bn", "k": int(k), "n_stats": int(n_stats), "eps_max": float(eps_max)}
    return model


#: model surgeries of other defenses, by the record's kind: the module holding ``apply_surgery(model, record)``
#: (and optionally ``configure(model, params)``), imported on use
OTHER_SURGERIES = {"deepcloak": "robench.defenses.deepcloak", "magnet": "robench.defenses.magnet"}


def _other(kind: str):
    import importlib

    return importlib.import_module(OTHER_SURGERIES[kind])


def apply_surgery(model: nn.Module, record: Optional[dict]) -> nn.Module:
    """Re-apply a ``model.robench_surgery`` record (from a checkpoint's metadata); None: nothing."""
    if not record:
        return model
    if record.get("kind") in OTHER_SURGERIES:  # the surgeries of other defenses (DeepCloak, MagNet)
        return _other(record["kind"]).apply_surgery(model, record)
    if record.get("kind") != "conditional_bn":
        raise RobenchError(f"unknown model surgery '{record.get('kind')}' in the checkpoint")
    condition_bn(model, record["k"], record["n_stats"], record["eps_max"])
    if record.get("eval_eps") is not None:
        tell_eps(model, record["eval_eps"])
    elif record.get("code") is not None:
        set_code(model, torch.tensor(record["code"], dtype=torch.float32))
    return model


def set_code(model: nn.Module, code: Optional[torch.Tensor]) -> None:
    layers = conditional_layers(model)
    if not layers:
        raise RobenchError("the model has no conditional batch-norm layers")
    for m in layers:
        m.code = code
    rec = getattr(model, "robench_surgery", None)
    if isinstance(rec, dict):   # what a checkpoint re-applies: a batch-wide code, not per-example ones
        rec.pop("eval_eps", None)
        rec["code"] = code.tolist() if code is not None and code.dim() == 1 else None


def encode_eps(eps: Union[float, torch.Tensor], eps_max: float) -> torch.Tensor:
    """RobMask's Encode (k = 2) [cheng2021 §6.3, (6.2)]: p = ε / ε_max (clipped to [0, 1]) -> [1 − p, p];
    a per-example eps tensor gives a (B, 2) code. (Footnote 1: ε = 6/255 at ε_max = 8/255 -> [0.25, 0.75].)"""
    p = torch.as_tensor(eps, dtype=torch.float32) / float(eps_max)
    p = p.clamp(0.0, 1.0)
    return torch.stack([1 - p, p], dim=-1)


def tell_eps(model: nn.Module, eps: Union[float, torch.Tensor]) -> None:
    """Tell an eps-conditioned (RobMask) model the eps it runs at."""
    layers = conditional_layers(model)
    if not layers:
        raise RobenchError("the model has no conditional batch-norm layers: it cannot be told an eps")
    if float(torch.as_tensor(eps).min()) < 0:
        raise RobenchError(f"eval eps must be >= 0, got {eps}")
    set_code(model, encode_eps(eps, layers[0].eps_max))
    if not isinstance(eps, torch.Tensor):
        model.robench_surgery["eval_eps"] = float(eps)


def configure(model: nn.Module, params: dict) -> str:
    """Set a loaded conditional-BN model from its recipe's parameters (``robench attack``): RobMask's
    ``eval_eps`` (the model is told that eps), bn_finetune's ``mix`` p (γ̂ = pγ + (1 − p)γ′); else the
    checkpoint's own setting. Returns what the model was told, for the summary."""
    kind = (getattr(model, "robench_surgery", {}) or {}).get("kind")
    if kind in OTHER_SURGERIES:
        mod = _other(kind)
        return mod.configure(model, params) if hasattr(mod, "configure") else kind
    if params.get("eval_eps") is not None:
        tell_eps(model, float(params["eval_eps"]))
        return f"eps {float(params['eval_eps']):g} (RobMask code {[round(v, 4) for v in encode_eps(float(params['eval_eps']), conditional_layers(model)[0].eps_max).tolist()]})"
    if params.get("mix") is not None:
        p = float(params["mix"])
        if not 0.0 <= p <= 1.0:
            raise RobenchError(f"mix must be in [0, 1], got {p}")
        set_code(model, torch.tensor([p, 1 - p]))
        return f"mix p={p:g} (gamma = p * original + (1 - p) * fine-tuned)"
    rec = getattr(model, "robench_surgery", {}) or {}
    return f"eps {rec['eval_eps']:g}" if rec.get("eval_eps") is not None else f"code {rec.get('code')}"
