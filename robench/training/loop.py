"""The one training loop every training recipe plugs into (DESIGN.md, "Defenses").

A recipe supplies the loss of a batch (``TrainingRecipe.batch_loss``) and, where it needs it,
per-example state; this loop owns the optimizer, the learning-rate schedule, batching, mixed
precision and ``channels_last`` on CUDA, the progress bar (loss, clean and adversarial batch
accuracy), the per-epoch CSV log and the resume state.
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


def _device(model: nn.Module) -> torch.device:
    """Where the model's tensors live (a model without parameters, e.g. ``gbdt``: its buffers, else CPU)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Logits of ``x`` (on the model's device), batched, in eval mode."""
    model.eval()
    dev = _device(model)
    return torch.cat([model(x[s:s + batch_size].to(dev)) for s in range(0, len(x), batch_size)])


@torch.no_grad()
def accuracy(model: nn.Module, ds: Dataset, batch_size: int = 500) -> float:
    model.eval()
    dev = _device(model)
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
    if name == "cyclic":
        # Wong et al. [wong2020] (fast AT): lr rises linearly from 0 to train.lr at fraction cycle_peak of
        # training (their code: 2/5 of the epochs), then falls linearly to 0; evaluated after each step
        # (step s runs at the value of s + 1, as their lr_schedule(epoch + (i + 1) / len(loader))).
        peak = float(tcfg.get("cycle_peak", 0.4))
        if not 0.0 < peak < 1.0:
            raise RobenchError(f"train.cycle_peak must be in (0, 1), got {peak}")
        up = peak * total

        def cyc(s):
            t = min(s + 1, total)
            return t / up if t <= up else max(0.0, (total - t) / (total - up))
        return torch.optim.lr_scheduler.LambdaLR(opt, cyc)
    raise RobenchError(f"train.schedule must be none, cosine, step, onecycle or cyclic, got '{name}'")


def _amp_setup(tcfg, device: torch.device):
    """(autocast dtype or None, GradScaler or None). ``train.amp``: auto (on for CUDA), true, false.
    bfloat16 where the GPU supports it (no loss scaling needed), else float16 with a GradScaler."""
    amp = tcfg.get("amp", "auto")
    on = device.type == "cuda" if str(amp).lower() == "auto" else bool(amp)
    if not on or device.type != "cuda":
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def _channels_last(tcfg, model: nn.Module, device: torch.device) -> bool:
    """``train.channels_last``: auto (CUDA and a model with 2-d convolutions), true, false."""
    v = tcfg.get("channels_last", "auto")
    if str(v).lower() == "auto":
        return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())
    return bool(v)


def _split_out(out):
    """A recipe's batch_loss result -> (loss, clean logits, adversarial logits or None)."""
    if len(out) == 2:
        return out[0], out[1], None
    return out[0], out[1], out[2]


def _rng_state() -> dict:
    s = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def train(model: nn.Module, recipe, splits, tcfg, device: torch.device, seed: int,
          log_path: Optional[Path] = None, progress: bool = True, state_path: Optional[Path] = None,
          fingerprint: str = "") -> dict:
    """Train ``model`` in place with ``recipe``; returns metrics (train/test accuracy, seconds, history).

    Per batch (``recipe.replays`` times, 1 unless the recipe replays minibatches as free AT does):
    ``recipe.batch_loss`` under autocast (CUDA, ``train.amp``), backward, optimizer and
    schedule steps, ``recipe.after_step``. Per epoch: test accuracy, a row of ``log_path`` (CSV), and,
    with ``state_path``, the resume state (weights, optimizer, schedule, loss scaler, the recipe's
    state, the shuffling and global RNG states, the log so far), written atomically. When
    ``state_path`` exists with the same ``fingerprint`` (and ``train.resume`` is true, the default),
    training resumes after its last finished epoch and ends exactly where an uninterrupted run would
    (on CPU; cuDNN kernels may differ in the last bits). The caller deletes the state once the final
    checkpoint is safe.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    epochs, bs = int(tcfg.get("epochs", 10)), int(tcfg.get("batch_size", 64))
    if epochs < 1 or bs < 1:
        raise RobenchError(f"train.epochs and train.batch_size must be >= 1 (got {epochs}, {bs})")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # layers' own init, dropout and the recipes draw from the global generator
    model.to(device)
    cl = _channels_last(tcfg, model, device)
    if cl:
        model.to(memory_format=torch.channels_last)
    amp_dtype, scaler = _amp_setup(tcfg, device)
    opt = make_optimizer(model.parameters(), tcfg)
    steps_per_epoch = math.ceil(len(splits.train) / bs)
    # recipes that replay each minibatch (free AT [shafahi2019]): that many optimizer steps per batch
    replays = max(1, int(recipe.replays))
    sched = make_schedule(opt, tcfg, steps_per_epoch * replays, epochs)
    recipe.setup(len(splits.train), splits.num_classes, device)
    rows: list = []
    start_epoch, t_before = 0, 0.0
    if state_path is not None and state_path.exists() and bool(tcfg.get("resume", True)):
        st = _load_state(state_path)
        if st is not None and st.get("fingerprint") == fingerprint and int(st["epoch"]) < epochs:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            if sched is not None and st.get("schedule") is not None:
                sched.load_state_dict(st["schedule"])
            if scaler is not None and st.get("scaler") is not None:
                scaler.load_state_dict(st["scaler"])
            recipe.load_state_dict(st.get("recipe", {}))
            gen.set_state(st["shuffle_rng"])
            _set_rng_state(st["rng"])
            rows, start_epoch, t_before = list(st["rows"]), int(st["epoch"]), float(st["seconds"])
    # recipes that may stop early (fast AT) roll back to the previous epoch's weights: keep them
    rollback = bool(getattr(recipe, "may_stop_early", False))
    prev_weights = _copy_weights(model) if rollback else None
    stopped_at = None
    t0 = time.perf_counter() - t_before
    adv = bool(getattr(recipe, "adversarial", False))
    fmt = "loss {task.fields[loss]:.4f}  clean {task.fields[acc]:.3f}" + ("  adv {task.fields[adv]:.3f}" if adv else "")
    cols = [TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(fmt), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*cols, disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=epochs * steps_per_epoch, completed=start_epoch * steps_per_epoch,
                            epoch=f"{start_epoch + 1}/{epochs}", loss=0.0, acc=0.0, adv=0.0)
        for ep in range(start_epoch, epochs):
            model.train()
            tot_loss = torch.zeros((), device=device)
            tot_correct = torch.zeros((), device=device)
            tot_adv = torch.zeros((), device=device)
            tot = n_adv = 0
            for b, (x, y, i) in enumerate(batches(splits.train, bs, shuffle=True, generator=gen, device=device)):
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                recipe.epoch = ep + b / steps_per_epoch
                for _ in range(replays):
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        loss, logits, adv_logits = _split_out(recipe.batch_loss(model, x, y, i))
                    opt.zero_grad(set_to_none=True)
                    grad_scale = 1.0
                    if scaler is not None:
                        grad_scale = float(scaler.get_scale())  # what the gradients were multiplied by
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                    else:
                        loss.backward()
                        opt.step()
                    recipe.after_step(grad_scale)
                    if sched is not None:
                        sched.step()
                tot_loss += loss.detach().float() * len(y)
                tot_correct += (logits.detach().argmax(1) == y).sum()
                if adv_logits is not None:
                    tot_adv += (adv_logits.detach().argmax(1) == y).sum()
                    n_adv += len(y)
                tot += len(y)
                if progress and (b % 10 == 0 or b == steps_per_epoch - 1):  # host sync only for the bar
                    bar.update(task, completed=ep * steps_per_epoch + b + 1, epoch=f"{ep + 1}/{epochs}",
                               loss=float(tot_loss) / tot, acc=float(tot_correct) / tot,
                               adv=float(tot_adv) / max(n_adv, 1))
            bar.update(task, completed=(ep + 1) * steps_per_epoch)
            if rollback and recipe.end_of_epoch(model, splits, ep + 1):
                # Wong et al.'s early stop: the check says this epoch overfitted catastrophically; the
                # model becomes the previous epoch's and training ends (the log ends at that epoch)
                model.load_state_dict(prev_weights)
                stopped_at = ep
                break
            if rollback:
                prev_weights = _copy_weights(model)
            test_acc = accuracy(model, splits.test)
            rows.append({"epoch": ep + 1, "train_loss": float(tot_loss) / tot, "train_acc": float(tot_correct) / tot,
                         "train_adv_acc": float(tot_adv) / n_adv if n_adv else float("nan"),
                         "test_acc": test_acc, "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0})
            if log_path is not None:
                _write_log(log_path, rows)
            if state_path is not None and ep + 1 < epochs:
                _save_state(state_path, {
                    "fingerprint": fingerprint, "epoch": ep + 1, "seconds": time.perf_counter() - t0, "rows": rows,
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict(), "schedule": None if sched is None else sched.state_dict(),
                    "scaler": None if scaler is None else scaler.state_dict(), "recipe": recipe.state_dict(),
                    "shuffle_rng": gen.get_state(), "rng": _rng_state()})
    seconds = time.perf_counter() - t0
    if cl:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    if not rows:  # stopped after the first epoch: the initial weights, nothing trained
        rows.append({"epoch": 0, "train_loss": float("nan"), "train_acc": float("nan"), "train_adv_acc": float("nan"),
                     "test_acc": accuracy(model, splits.test), "lr": opt.param_groups[0]["lr"],
                     "seconds": time.perf_counter() - t0})
    last = rows[-1]
    return {"train_accuracy": accuracy(model, splits.train), "train_batch_accuracy": last["train_acc"],
            "train_adv_accuracy": last["train_adv_acc"], "clean_accuracy": last["test_acc"],
            "epochs": epochs if stopped_at is None else stopped_at, "early_stopped_at_epoch": stopped_at,
            "seconds": seconds, "resumed_from_epoch": start_epoch, "history": rows}


def _copy_weights(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _save_state(path: Path, state: dict) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(path: Path) -> Optional[dict]:
    """The resume state, or None when it is unreadable (then training starts over)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None


def _write_log(path: Path, rows: list) -> None:
    from robench.evaluation.results import atomic_write_text
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
