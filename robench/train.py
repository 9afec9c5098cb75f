"""The one training loop every training recipe plugs into (DESIGN.md, "Defenses").

A recipe supplies the loss of a batch (``TrainingRecipe.batch_loss``); this loop owns the optimizer,
the learning-rate schedule, batching, the progress bar, the per-epoch log and the checkpoint.
"""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from robench.errors import RobenchError


def batches(ds: Dataset, batch_size: int, shuffle: bool, generator: Optional[torch.Generator] = None,
            device: Any = "cpu") -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x, y, dataset index) batches on ``device``; in-memory tensor datasets skip the DataLoader."""
    n = len(ds)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if isinstance(ds, TensorDataset):
        x_all, y_all = ds.tensors[0], ds.tensors[1]
        for s in range(0, n, batch_size):
            i = order[s:s + batch_size]
            yield x_all[i].to(device, non_blocking=True), y_all[i].to(device, non_blocking=True), i
        return
    sub = torch.utils.data.Subset(ds, order.tolist())
    loader = DataLoader(sub, batch_size=batch_size, shuffle=False, num_workers=0)
    for s, (x, y) in zip(range(0, n, batch_size), loader):
        yield x.to(device), y.to(device), order[s:s + batch_size]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Logits of ``x`` (on the model's device), batched, in eval mode."""
    model.eval()
    dev = next(model.parameters()).device
    return torch.cat([model(x[s:s + batch_size].to(dev)) for s in range(0, len(x), batch_size)])


@torch.no_grad()
def accuracy(model: nn.Module, ds: Dataset, batch_size: int = 500) -> float:
    model.eval()
    dev = next(model.parameters()).device
    correct = total = 0
    for x, y, _ in batches(ds, batch_size, shuffle=False, device=dev):
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def make_optimizer(params, tcfg) -> torch.optim.Optimizer:
    name = str(tcfg.get("optimizer", "adam")).lower()
    lr, wd = float(tcfg.get("lr", 1e-3)), float(tcfg.get("weight_decay", 0.0))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(tcfg.get("momentum", 0.9)), weight_decay=wd,
                               nesterov=bool(tcfg.get("nesterov", False)))
    raise RobenchError(f"train.optimizer must be 'adam' or 'sgd', got '{name}'")


def make_schedule(opt, tcfg, steps_per_epoch: int, epochs: int):
    name = str(tcfg.get("schedule", "none")).lower()
    total = max(1, steps_per_epoch * epochs)
    if name == "none":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    if name == "step":  # milestones in epochs, applied per step
        ms = [int(m) * steps_per_epoch for m in tcfg.get("milestones", [])]
        gamma = float(tcfg.get("gamma", 0.1))
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: gamma ** sum(s >= m for m in ms))
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(tcfg.get("lr", 1e-3)), total_steps=total)
    raise RobenchError(f"train.schedule must be none, cosine, step or onecycle, got '{name}'")


def train(model: nn.Module, recipe, splits, tcfg, device: torch.device, seed: int,
          log_path: Optional[Path] = None, progress: bool = True) -> dict:
    """Train ``model`` in place with ``recipe``; returns metrics (train/test accuracy, seconds)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    epochs, bs = int(tcfg.get("epochs", 10)), int(tcfg.get("batch_size", 64))
    if epochs < 1 or bs < 1:
        raise RobenchError(f"train.epochs and train.batch_size must be >= 1 (got {epochs}, {bs})")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # layers' own init and dropout draw from the global generator
    model.to(device)
    opt = make_optimizer(model.parameters(), tcfg)
    steps_per_epoch = math.ceil(len(splits.train) / bs)
    sched = make_schedule(opt, tcfg, steps_per_epoch, epochs)
    recipe.setup(len(splits.train), splits.num_classes, device)
    rows, t0 = [], time.perf_counter()
    cols = [TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*cols, disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=epochs * steps_per_epoch, epoch=f"1/{epochs}", loss=0.0, acc=0.0)
        for ep in range(epochs):
            model.train()
            tot_loss = tot_correct = tot = 0.0
            for x, y, i in batches(splits.train, bs, shuffle=True, generator=gen, device=device):
                loss, logits = recipe.batch_loss(model, x, y, i)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                tot_loss += float(loss.detach()) * len(y)
                tot_correct += float((logits.argmax(1) == y).sum())
                tot += len(y)
                bar.update(task, advance=1, epoch=f"{ep + 1}/{epochs}", loss=tot_loss / tot, acc=tot_correct / tot)
            test_acc = accuracy(model, splits.test)
            rows.append({"epoch": ep + 1, "train_loss": tot_loss / tot, "train_acc": tot_correct / tot,
                         "test_acc": test_acc, "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0})
            if log_path is not None:
                _write_log(log_path, rows)
    model.eval()
    return {"train_accuracy": rows[-1]["train_acc"], "clean_accuracy": rows[-1]["test_acc"],
            "epochs": epochs, "seconds": time.perf_counter() - t0, "history": rows}


def _write_log(path: Path, rows: list) -> None:
    from robench.results import atomic_write_text
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
