"""Gradient-boosted decision trees (LightGBM [ke2017lightgbm]) as a victim: ``model=gbdt``.

The non-differentiable victim of [cheng2021 §2.5.0.5, Table 2.1]: OPT-attack needs only the top-1
label, so a tree ensemble is as attackable as a network, while a gradient attack has nothing to
differentiate (robench/victim.py :func:`~robench.victim.check_access` refuses it in one line).

* Input: [0, 1] NCHW images behind robench's usual Normalize layer (``build_model``), flattened to
  one feature per pixel (and channel). Trees split on thresholds, so the per-channel affine
  normalisation changes nothing but the thresholds' values.
* Output: LightGBM's **raw margins** (``predict(raw_score=True)``), one per class; for the
  multiclass objective they are the logits (the predicted probabilities are their softmax), so
  score-based attacks get the same softmax every robench victim gives them. Computed on the CPU
  through LightGBM (``threads`` of them), returned on the input's device, with no autograd graph.
* Weights: the booster in LightGBM's own text model format (``Booster.model_to_string``), stored
  as a uint8 buffer ``booster`` of the state dict, so robench's checkpoint (``torch.load(weights_only=
  True)``) holds it and never a pickle.
* Training: ``robench train-defense model=gbdt`` (defense=none only) calls :func:`fit` instead of
  the gradient loop (robench/cli/train_job.py).

Hyper-parameters (configs/model/gbdt.yaml). [cheng2021 §2.5.0.5] gives 100 trees (boosting rounds),
at most 100 leaves and no depth limit, "params from https://github.com/Koziev/MNIST_Boosting" (98.09%
on MNIST). From that script robench takes min_data_in_leaf 100, feature_fraction 0.7, bagging 0.7
every round and max_bin 256. Its learning rate, 0.05, goes with up to 5,000 rounds and early
stopping, which 100 rounds never reach; the thesis is silent on it, so robench chooses LightGBM's
default, 0.1, deliberately (100 rounds at 0.05 stop well short of convergence).
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from robench.errors import RobenchError
from robench.registry import MODELS


def _lightgbm():
    try:
        import lightgbm
    except ImportError:
        raise RobenchError("model=gbdt needs the 'lightgbm' package: pip install 'robench[gbdt]'") from None
    return lightgbm


class GBDT(nn.Module):
    """A LightGBM multiclass booster behind the nn.Module interface (raw margins = logits, no gradients)."""

    #: why the model has no input gradients (robench.victim.check_access refuses gradient attacks with it)
    gradient_free = "model=gbdt is a LightGBM tree ensemble and has no gradients"

    def __init__(self, num_classes: int, shape, params: Dict[str, Any], rounds: int, threads: int):
        super().__init__()
        self.num_classes, self.shape = int(num_classes), tuple(shape)
        self.params, self.rounds, self.threads = dict(params), int(rounds), int(threads)
        self.register_buffer("booster", torch.zeros(0, dtype=torch.uint8))
        self._booster = None

    # ---------------------------------------------------------------- the model text in the state dict
    def set_booster(self, booster) -> None:
        text = booster.model_to_string()
        self.booster = torch.from_numpy(np.frombuffer(text.encode(), dtype=np.uint8).copy()).to(self.booster.device)
        self._booster = booster

    def _from_text(self, blob: torch.Tensor) -> None:
        lgb = _lightgbm()
        try:
            booster = lgb.Booster(model_str=bytes(blob.cpu().numpy()).decode())
        except Exception as e:
            raise RobenchError(f"the gbdt checkpoint holds no readable LightGBM model ({e.__class__.__name__})") from None
        if booster.num_model_per_iteration() != self.num_classes:
            raise RobenchError(f"the gbdt checkpoint classifies {booster.num_model_per_iteration()} classes, "
                               f"the dataset has {self.num_classes}")
        self.booster, self._booster = blob.clone(), booster

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "booster"
        if key not in state_dict:
            missing_keys.append(key)
            return
        blob = state_dict[key]
        if blob.dtype != torch.uint8 or blob.dim() != 1:
            error_msgs.append(f"{key}: expected LightGBM model text as a 1-d uint8 tensor")
            return
        if len(blob):
            self._from_text(blob)

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._booster is None:
            raise RobenchError("model=gbdt is not trained: train it with `robench train-defense model=gbdt`")
        feats = x.detach().flatten(1).float().cpu().numpy()
        if feats.shape[1] != self._booster.num_feature():
            raise RobenchError(f"model=gbdt was trained on {self._booster.num_feature()} features, the input has "
                               f"{feats.shape[1]}")
        if len(feats) == 0:
            return torch.zeros(0, self.num_classes, device=x.device)
        raw = self._booster.predict(feats, raw_score=True, num_threads=self.threads)
        return torch.as_tensor(np.asarray(raw, dtype=np.float32).reshape(len(feats), -1), device=x.device)

    def extra_repr(self) -> str:
        return f"rounds={self.rounds}, num_classes={self.num_classes}, params={self.params}"


@MODELS.register("gbdt")
def gbdt(num_classes: int = 10, shape=(1, 28, 28), num_trees: int = 100, num_leaves: int = 100,
         learning_rate: float = 0.1, min_data_in_leaf: int = 100, feature_fraction: float = 0.7,
         bagging_fraction: float = 0.7, max_bin: int = 256, threads: int = 1) -> nn.Module:
    """Gradient-boosted trees, LightGBM [ke2017lightgbm]: raw margins as logits, no gradients (gbdt extra)

    The non-differentiable MNIST victim of [cheng2021 §2.5.0.5]: ``num_trees`` boosting rounds (one tree
    per class each). Train it with ``robench train-defense model=gbdt``."""
    params = {"num_leaves": num_leaves, "learning_rate": learning_rate, "min_data_in_leaf": min_data_in_leaf,
              "feature_fraction": feature_fraction, "bagging_fraction": bagging_fraction,
              "bagging_freq": 1 if bagging_fraction < 1 else 0, "max_bin": max_bin, "max_depth": -1}
    return GBDT(num_classes, shape, params, num_trees, threads)


gbdt.gradient_free = GBDT.gradient_free  # read before the model is built (robench.victim.refuse_gradients)
gbdt.param_ranges = {"num_trees": ">=1", "num_leaves": ">=2", "min_data_in_leaf": ">=1", "feature_fraction": "(0,1]",
                     "bagging_fraction": "(0,1]", "max_bin": ">=2", "threads": ">=1"}


def find_gbdt(model: nn.Module) -> Optional[GBDT]:
    return next((m for m in model.modules() if isinstance(m, GBDT)), None)


def _features(model: nn.Module, net: GBDT, x: torch.Tensor) -> np.ndarray:
    """What ``net`` sees of ``x``: the modules in front of it (robench's Normalize), flattened."""
    pre = getattr(model, "norm", None)
    with torch.no_grad():
        return (pre(x) if pre is not None else x).flatten(1).float().cpu().numpy()


def _all(ds):
    from torch.utils.data import DataLoader

    xs, ys = zip(*[(a, b) for a, b in DataLoader(ds, batch_size=5000)])
    return torch.cat(xs), torch.cat(ys)


def fit(model: nn.Module, splits, seed: int, recipe: str = "none") -> Dict[str, Any]:
    """Train the booster of ``model`` (a ``gbdt`` behind Normalize) on the whole training split; returns
    the metrics ``robench.training.loop.train`` returns (train/test accuracy, seconds, a one-row history).
    Only plain training: every other recipe needs gradients (one line)."""
    if recipe != "none":
        raise RobenchError(f"model=gbdt trains with defense=none only: defense={recipe} needs gradients of the model, "
                           f"which a tree ensemble does not have")
    lgb = _lightgbm()
    net = find_gbdt(model)
    x, y = _all(splits.train)
    t0 = time.perf_counter()
    params = {**net.params, "objective": "multiclass", "num_class": net.num_classes, "num_threads": net.threads,
              "seed": int(seed), "deterministic": True, "force_col_wise": True, "verbose": -1}
    data = lgb.Dataset(_features(model, net, x), y.numpy(), free_raw_data=True)
    net.set_booster(lgb.train(params, data, num_boost_round=net.rounds))
    seconds = time.perf_counter() - t0
    model.eval()
    acc = {}
    for name, ds in (("train", splits.train), ("test", splits.test)):
        xs, ys = (x, y) if name == "train" else _all(ds)
        acc[name] = float((model(xs).argmax(1) == ys).float().mean())
    row = {"epoch": 1, "train_loss": float("nan"), "train_acc": acc["train"], "train_adv_acc": float("nan"),
           "test_acc": acc["test"], "lr": net.params["learning_rate"], "seconds": seconds}
    return {"train_accuracy": acc["train"], "train_batch_accuracy": acc["train"], "train_adv_accuracy": float("nan"),
            "clean_accuracy": acc["test"], "epochs": 1, "early_stopped_at_epoch": None, "seconds": seconds,
            "resumed_from_epoch": 0, "history": [row]}
