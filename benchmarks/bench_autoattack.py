"""robench's ``autoattack`` (standard) and ``fab`` against the original AutoAttack [croce2020] and its FAB
[croce2020fab], in one process, on the same model and images.

The original is the authors' package ``autoattack`` (github.com/fra31/auto-attack). It is never a
dependency of robench: install it in a benchmark environment only, e.g. ``pip install
git+https://github.com/fra31/auto-attack`` into a separate virtual environment, or put a checkout's
folder on ``PYTHONPATH`` (``--aa-path DIR``: the folder that holds the ``autoattack`` package).

For each victim (``--defenses``: robench checkpoints ``<checkpoint-dir>/mnist/cw_mnist/<defense>.pt``
of ``robench train-defense dataset=mnist model=cw_mnist defense=<defense> budget=linf_0.3``) and each
threat model (``--threats``: ``linf:0.3``, ``l2:2.0``) on the first ``--n`` embedded MNIST test images:

* **AutoAttack standard.** The original ``AutoAttack(model, norm, eps, version='standard', seed=0)
  .run_standard_evaluation(x, y, bs=250)`` and ``robench.evaluate(model, x, y, attack="autoattack",
  budget=Budget(norm, eps, max_queries=10000), batch_size=250, seed=0)``. Printed: robust accuracy of
  each (the original: its returned points re-classified; robench: its certified records), the
  per-sample agreement of the robust sets, every image robust for one only with the member of the
  other that broke it, each member's breaks, wall time, and model evaluations (forward rows of the
  victim, counted by a wrapper both runs go through; ``grad rows``: those computed with gradients).
  robench's rows include its pre-flight, clean predictions and re-checks; the original's include its
  checks and clean accuracy.
* **FAB alone** (``--fab``): minimal distortion, untargeted, ``--fab-steps`` iterations and
  ``--fab-restarts`` restarts for both: the original ``FABAttack_PT`` (its ``attack_single_run`` per
  restart, the best distortion over restarts; random restarts at its eps default per norm) and
  ``robench.evaluate(model, x, y, attack="fab", budget=Budget(norm, eps=None, max_queries=10**7))``.
  Printed: success rate over the clean-correct images, median and mean distortion of the successes,
  their ratio, wall time, model evaluations.

Results are appended to ``--out`` (JSON lines), one line per (victim, threat, comparison), so a long
run can be continued (``--resume`` skips lines already there) and tabulated later (``--table``).

    PYTHONPATH=AA_DIR python benchmarks/bench_autoattack.py --checkpoint-dir CK [--defenses none,pgd_at,trades]
        [--threats linf:0.3,l2:2.0] [--n 1000] [--offset 0] [--what aa,fab] [--fab-n 1000] [--out bench_autoattack.jsonl]
    python benchmarks/bench_autoattack.py --table bench_autoattack.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import OmegaConf

from robench.config import configs_dir

SEED, BS, MAX_QUERIES = 0, 250, 10_000
#: the threat norms this comparison runs, as the original AutoAttack names them
_AA_NORMS = {"linf": "Linf", "l2": "L2"}


class Counted(torch.nn.Module):
    """The victim behind a row counter: forward rows, and of them rows computed with gradients."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows, self.grad_rows, self.on = model, 0, 0, True

    def forward(self, x):
        if self.on:
            self.rows += x.shape[0]
            if torch.is_grad_enabled() and x.requires_grad:
                self.grad_rows += x.shape[0]
        return self.model(x)

    def reset(self):
        self.rows = self.grad_rows = 0


def _keys(x: torch.Tensor) -> List[bytes]:
    return [r.numpy().tobytes() for r in x.detach().float().cpu().flatten(1)]


class Index:
    """Global image index of a row of clean images (by their bytes)."""

    def __init__(self, x: torch.Tensor):
        self.map: Dict[bytes, int] = {}
        for i, k in enumerate(_keys(x)):
            self.map.setdefault(k, i)

    def of(self, x: torch.Tensor) -> List[int]:
        return [self.map[k] for k in _keys(x)]


# ---------------------------------------------------------------- the original AutoAttack
def run_original_aa(model: Counted, x, y, norm: str, eps: float, index: Index, seed: int = SEED):
    from autoattack import AutoAttack

    aa = AutoAttack(model, norm=_AA_NORMS[norm], eps=eps, version="standard", seed=seed,
                    verbose=False, device=str(x.device))
    broke: Dict[int, str] = {}
    seconds: Dict[str, float] = {}
    rows: Dict[str, int] = {}

    def traced(label, obj):
        orig = obj.perturb

        def perturb(xb, yb, *a, **k):
            t, r0 = time.perf_counter(), model.rows
            out = orig(xb, yb, *a, **k)
            seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - t
            rows[label] = rows.get(label, 0) + model.rows - r0
            model.on = False
            with torch.no_grad():
                fooled = model(out).argmax(1) != yb
            model.on = True
            for i, f in zip(index.of(xb), fooled.tolist()):
                if f and i not in broke:
                    broke[i] = label
            return out

        obj.perturb = perturb

    # set_version('standard') runs apgd-ce (self.apgd), apgd-t, fab-t (self.fab, targeted), square
    traced("apgd-ce", aa.apgd)
    traced("apgd-t", aa.apgd_targeted)
    traced("fab-t", aa.fab)
    traced("square", aa.square)
    model.reset()
    t = time.perf_counter()
    x_adv = aa.run_standard_evaluation(x, y, bs=BS)
    wall = time.perf_counter() - t
    ev_rows, ev_grad = model.rows, model.grad_rows
    model.on = False
    with torch.no_grad():
        robust = torch.cat([model(x_adv[s:s + 500]).argmax(1) for s in range(0, len(x), 500)]) == y
    model.on = True
    return {"robust": robust.cpu(), "broke": broke, "wall": wall, "rows": ev_rows, "grad_rows": ev_grad,
            "member_seconds": seconds, "member_rows": rows}


# ---------------------------------------------------------------- robench
def traced_autoattack(trace: Dict[int, str], index: Index):
    """robench's registered autoattack, each member wrapped to note which images it broke first."""
    from robench.attacks.base import Attack
    from robench.attacks.composite.autoattack import AutoAttack

    class Traced(Attack):
        def __init__(self, inner, label):
            self.inner, self.label = inner, label
            self.access, self.minimizes_distortion = inner.access, inner.minimizes_distortion

        def run(self, oracle, generator):
            before = oracle.success
            self.inner.run(oracle, generator)
            new = oracle.success & ~before
            for i in index.of(oracle.x0[new]):
                trace.setdefault(i, self.label)

    class TracedAutoAttack(AutoAttack):
        def _use(self, version):
            super()._use(version)
            self.members = [(n, Traced(m, l)) for (n, m), l in zip(self.members, self.labels)]

    return TracedAutoAttack()


def run_robench_aa(model: Counted, x, y, norm: str, eps: float, index: Index):
    import robench

    broke: Dict[int, str] = {}
    atk = traced_autoattack(broke, index)
    model.reset()
    t = time.perf_counter()
    res = robench.evaluate(model, x, y, attack=atk, budget=robench.Budget(norm=norm, eps=eps, max_queries=MAX_QUERIES),
                           batch_size=BS, seed=SEED)
    wall = time.perf_counter() - t
    rec = res.records.sort_values("index")
    success = torch.tensor(rec["success"].astype(bool).to_numpy())
    correct = torch.tensor((rec["clean_pred"] == rec["label"]).to_numpy())
    s = res.summary
    return {"robust": (correct & ~success), "broke": broke, "wall": wall, "rows": model.rows,
            "grad_rows": model.grad_rows, "queries": int(s.get("total_queries", 0)),
            "members": s.get("attack_extra", {}).get("ensemble"), "version": (s.get("attack_extra", {}).get("autoattack") or {}).get("version"),
            "recheck_failed": s.get("recheck_failed")}


# ---------------------------------------------------------------- FAB alone
def run_original_fab(model: Counted, x, y, norm: str, steps: int, restarts: int):
    from autoattack.fab_pt import FABAttack_PT

    fab = FABAttack_PT(model, norm=_AA_NORMS[norm], n_restarts=restarts, n_iter=steps, seed=SEED,
                       device=str(x.device))
    torch.random.manual_seed(SEED)
    p = float("inf") if norm == "linf" else 2
    best = torch.full((len(x),), float("inf"))
    model.reset()
    t = time.perf_counter()
    for r in range(restarts):
        for s in range(0, len(x), BS):
            xb, yb = x[s:s + BS], y[s:s + BS]
            adv = fab.attack_single_run(xb, yb, use_rand_start=r > 0, is_targeted=False)
            model.on = False
            with torch.no_grad():
                fooled = (model(adv).argmax(1) != yb).cpu()
            model.on = True
            d = (adv - xb).flatten(1).norm(p=p, dim=1).cpu()
            best[s:s + BS] = torch.where(fooled, torch.minimum(best[s:s + BS], d), best[s:s + BS])
    wall = time.perf_counter() - t
    return {"dist": best, "wall": wall, "rows": model.rows, "grad_rows": model.grad_rows}


def run_robench_fab(model: Counted, x, y, norm: str, steps: int, restarts: int):
    import robench

    model.reset()
    t = time.perf_counter()
    res = robench.evaluate(model, x, y, attack="fab", budget=robench.Budget(norm=norm, eps=None, max_queries=10 ** 7),
                           batch_size=BS, seed=SEED, steps=steps, restarts=restarts)
    wall = time.perf_counter() - t
    p = float("inf") if norm == "linf" else 2
    rec = res.records.sort_values("index")
    success = torch.tensor(rec["success"].astype(bool).to_numpy())
    d = (res.adversarial - x.cpu()).flatten(1).norm(p=p, dim=1)
    dist = torch.where(success, d, torch.full_like(d, float("inf")))
    return {"dist": dist, "wall": wall, "rows": model.rows, "grad_rows": model.grad_rows,
            "queries": int(res.summary.get("total_queries", 0))}


# ---------------------------------------------------------------- driver
def load_victim(checkpoint_dir: str, defense: str, device):
    from robench.models.checkpoint import checkpoint_path, load_checkpoint
    from robench.data import load_dataset
    from robench.models import build_model

    dcfg = OmegaConf.load(configs_dir() / "dataset" / "mnist.yaml")
    splits = load_dataset(dcfg)
    path = checkpoint_path(checkpoint_dir, OmegaConf.to_container(dcfg, resolve=True), {"name": "cw_mnist", "params": {}},
                           defense)
    if not path.exists():
        raise SystemExit(f"no checkpoint at {path}: run `robench train-defense dataset=mnist model=cw_mnist "
                         f"defense={defense} budget=linf_0.3 checkpoint_dir={checkpoint_dir}` first")
    model = build_model("cw_mnist", splits)
    load_checkpoint(path, model)
    for p_ in model.parameters():
        p_.requires_grad_(False)
    return model.to(device).eval(), splits


def compare_aa(model, x, y, norm, eps) -> Dict[str, Any]:
    index = Index(x)
    cm = Counted(model)
    load0 = os.getloadavg()[0]
    orig = run_original_aa(cm, x, y, norm, eps, index)
    load1 = os.getloadavg()[0]
    ours = run_robench_aa(cm, x, y, norm, eps, index)
    load2 = os.getloadavg()[0]
    ro, rr = orig["robust"], ours["robust"]
    only_orig = (ro & ~rr).nonzero().flatten().tolist()   # robust for the original only: robench broke it
    only_ours = (rr & ~ro).nonzero().flatten().tolist()   # robust for robench only: the original broke it
    return {"n": len(y), "robust_original": float(ro.float().mean()), "robust_robench": float(rr.float().mean()),
            "agreement": float((ro == rr).float().mean()),
            "robust_only_original": [{"index": i, "robench_member": ours["broke"].get(i)} for i in only_orig],
            "robust_only_robench": [{"index": i, "original_attack": orig["broke"].get(i)} for i in only_ours],
            "wall_original": orig["wall"], "wall_robench": ours["wall"],
            "rows_original": orig["rows"], "grad_rows_original": orig["grad_rows"],
            "rows_robench": ours["rows"], "grad_rows_robench": ours["grad_rows"], "queries_robench": ours["queries"],
            "broke_original": _count(orig["broke"]), "broke_robench": _count(ours["broke"]),
            "member_seconds_original": orig["member_seconds"], "member_rows_original": orig["member_rows"],
            "members_robench": ours["members"], "version_robench": ours["version"],
            "recheck_failed_robench": ours["recheck_failed"], "load": [load0, load1, load2]}


def compare_self(model, x, y, norm, eps) -> Dict[str, Any]:
    """The original against itself with another seed (``--what self``): how far two runs of the reference
    disagree, the noise floor for robench's agreement with it."""
    index = Index(x)
    cm = Counted(model)
    a = run_original_aa(cm, x, y, norm, eps, index, seed=SEED)
    b = run_original_aa(cm, x, y, norm, eps, index, seed=SEED + 1)
    ra, rb = a["robust"], b["robust"]
    return {"n": len(y), "robust_seed0": float(ra.float().mean()), "robust_seed1": float(rb.float().mean()),
            "agreement": float((ra == rb).float().mean()),
            "robust_only_seed0": [{"index": i, "seed1_attack": b["broke"].get(i)} for i in (ra & ~rb).nonzero().flatten().tolist()],
            "robust_only_seed1": [{"index": i, "seed0_attack": a["broke"].get(i)} for i in (rb & ~ra).nonzero().flatten().tolist()],
            "wall_seed0": a["wall"], "wall_seed1": b["wall"]}


def compare_fab(model, x, y, norm, steps, restarts) -> Dict[str, Any]:
    cm = Counted(model)
    with torch.no_grad():
        ok = (model(x).argmax(1) == y)
    x, y = x[ok], y[ok]
    load0 = os.getloadavg()[0]
    orig = run_original_fab(cm, x, y, norm, steps, restarts)
    ours = run_robench_fab(cm, x, y, norm, steps, restarts)
    load1 = os.getloadavg()[0]
    out = {"n_correct": len(y), "steps": steps, "restarts": restarts, "load": [load0, load1]}
    for k, r in (("original", orig), ("robench", ours)):
        d = r["dist"]
        s = torch.isfinite(d)
        out[f"success_{k}"] = float(s.float().mean())
        out[f"median_{k}"] = float(d[s].median()) if s.any() else float("nan")
        out[f"mean_{k}"] = float(d[s].mean()) if s.any() else float("nan")
        out[f"wall_{k}"], out[f"rows_{k}"], out[f"grad_rows_{k}"] = r["wall"], r["rows"], r["grad_rows"]
    both = torch.isfinite(orig["dist"]) & torch.isfinite(ours["dist"])
    out["median_both_original"] = float(orig["dist"][both].median()) if both.any() else float("nan")
    out["median_both_robench"] = float(ours["dist"][both].median()) if both.any() else float("nan")
    out["robench_smaller_or_equal"] = float((ours["dist"][both] <= orig["dist"][both] + 1e-6).float().mean())
    out["queries_robench"] = ours["queries"]
    return out


def _count(broke: Dict[int, str]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for v in broke.values():
        out[v] = out.get(v, 0) + 1
    return out


def combine(lines: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One AutoAttack row per (victim, threat) over its slices (``--offset``/``--n`` runs).

    Of two lines for the same slice the later one counts (a rerun); slices that overlap without being the
    same are refused (counting an image twice would move the rate). Rates are recomputed from counts, so a
    combined row is what one run over the union of the slices would print, except its wall times (sums of
    the slices' walls, each measured in its own process).
    """
    last: Dict[tuple, Dict[str, Any]] = {}
    for r in lines:
        if r["what"] == "aa":
            last[(r["defense"], r["threat"], r.get("offset", 0), r["n"])] = r
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for (d, t, o, n), r in last.items():
        groups.setdefault((d, t), []).append(r)
    out = []
    for (d, t), rs in groups.items():
        rs.sort(key=lambda r: r.get("offset", 0))
        for a, b in zip(rs, rs[1:]):
            if a.get("offset", 0) + a["n"] > b.get("offset", 0):
                raise SystemExit(f"--table: {d} {t}: slices from {a.get('offset', 0)} (n={a['n']}) and "
                                 f"{b.get('offset', 0)} (n={b['n']}) overlap; remove one line of the pair")
        n = sum(r["n"] for r in rs)
        c = {"defense": d, "threat": t, "n": n, "slices": [(r.get("offset", 0), r["n"]) for r in rs]}
        for side in ("original", "robench"):
            c[f"robust_{side}"] = sum(round(r[f"robust_{side}"] * r["n"]) for r in rs) / n
            for k in (f"wall_{side}", f"rows_{side}", f"grad_rows_{side}"):
                c[k] = sum(r[k] for r in rs)
        c["agreement"] = sum(round(r["agreement"] * r["n"]) for r in rs) / n
        c["robust_only_original"] = [dict(e, index=e["index"] + r.get("offset", 0)) for r in rs
                                     for e in r["robust_only_original"]]
        c["robust_only_robench"] = [dict(e, index=e["index"] + r.get("offset", 0)) for r in rs
                                    for e in r["robust_only_robench"]]
        out.append(c)
    return out


def _ranges(slices) -> str:
    """[(0, 100), (100, 200)] -> '0-299'; gaps shown as separate ranges."""
    parts: List[List[int]] = []
    for o, n in slices:
        if parts and parts[-1][1] == o:
            parts[-1][1] = o + n
        else:
            parts.append([o, o + n])
    return ", ".join(f"{a}-{b - 1}" for a, b in parts)


def table(paths: List[Path]) -> None:
    lines = [json.loads(l) for path in paths for l in path.read_text().splitlines() if l.strip()]
    print("| victim | threat | n | robust original | robust robench | diff (points) | agreement | only original robust (robench member) | only robench robust (original attack) | wall original s | wall robench s | ratio | rows original (grad) | rows robench (grad) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in lines:
        if r["what"] != "aa":
            continue
        o = r.get("offset", 0)
        oo = ", ".join(f"{e['index'] + o} ({e['robench_member']})" for e in r["robust_only_original"]) or "-"
        orb = ", ".join(f"{e['index'] + o} ({e['original_attack']})" for e in r["robust_only_robench"]) or "-"
        n = f"{r['n']} (from {r['offset']})" if r.get("offset") else f"{r['n']}"
        print(f"| {r['defense']} | {r['threat']} | {n} | {100 * r['robust_original']:.1f}% | "
              f"{100 * r['robust_robench']:.1f}% | {100 * (r['robust_robench'] - r['robust_original']):+.1f} | "
              f"{100 * r['agreement']:.1f}% | {oo} | {orb} | {r['wall_original']:.0f} | {r['wall_robench']:.0f} | "
              f"{r['wall_robench'] / r['wall_original']:.2f} | {r['rows_original']:,} ({r['grad_rows_original']:,}) | "
              f"{r['rows_robench']:,} ({r['grad_rows_robench']:,}) |")
    print()
    print("Combined over slices (the later line of a rerun slice counts; wall times are sums over the slices' runs):")
    print()
    print("| victim | threat | images | n | robust original | robust robench | diff (points) | agreement | only original robust (robench member) | only robench robust (original attack) | wall original s | wall robench s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in combine(lines):
        oo = ", ".join(f"{e['index']} ({e['robench_member']})" for e in r["robust_only_original"]) or "-"
        orb = ", ".join(f"{e['index']} ({e['original_attack']})" for e in r["robust_only_robench"]) or "-"
        print(f"| {r['defense']} | {r['threat']} | {_ranges(r['slices'])} | {r['n']} | {100 * r['robust_original']:.1f}% | "
              f"{100 * r['robust_robench']:.1f}% | {100 * (r['robust_robench'] - r['robust_original']):+.1f} | "
              f"{100 * r['agreement']:.1f}% | {oo} | {orb} | {r['wall_original']:.0f} | {r['wall_robench']:.0f} | "
              f"{r['wall_robench'] / r['wall_original']:.2f} |")
    print()
    print("| victim | threat | n correct | steps x restarts | success original | success robench | median original | median robench | ratio | mean original | mean robench | wall original s | wall robench s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in lines:
        if r["what"] != "fab":
            continue
        print(f"| {r['defense']} | {r['threat']} | {r['n_correct']} | {r['steps']} x {r['restarts']} | "
              f"{100 * r['success_original']:.1f}% | {100 * r['success_robench']:.1f}% | {r['median_original']:.4f} | "
              f"{r['median_robench']:.4f} | {r['median_robench'] / r['median_original']:.4f} | {r['mean_original']:.4f} | "
              f"{r['mean_robench']:.4f} | {r['wall_original']:.0f} | {r['wall_robench']:.0f} |")
    print()
    print("| victim | threat | n | original seed 0 robust | seed 1 robust | agreement | robust for seed 0 only (seed 1's attack) | robust for seed 1 only (seed 0's attack) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in lines:
        if r["what"] != "self":
            continue
        n = f"{r['n']} (from {r['offset']})" if r.get("offset") else f"{r['n']}"
        o = r.get("offset", 0)
        a = ", ".join(f"{e['index'] + o} ({e['seed1_attack']})" for e in r["robust_only_seed0"]) or "-"
        b = ", ".join(f"{e['index'] + o} ({e['seed0_attack']})" for e in r["robust_only_seed1"]) or "-"
        print(f"| {r['defense']} | {r['threat']} | {n} | {100 * r['robust_seed0']:.1f}% | {100 * r['robust_seed1']:.1f}% | "
              f"{100 * r['agreement']:.1f}% | {a} | {b} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint-dir", default="checkpoints")
    p.add_argument("--defenses", default="none,pgd_at,trades")
    p.add_argument("--threats", default="linf:0.3,l2:2.0")
    p.add_argument("--n", type=int, default=1000, help="first n embedded test images (AutoAttack)")
    p.add_argument("--offset", type=int, default=0, help="start at this test image (a later slice of --n images; "
                   "the indices in --out count from it, --table prints test-set indices)")
    p.add_argument("--fab-n", type=int, default=1000, help="first n embedded test images (FAB alone)")
    p.add_argument("--what", default="aa,fab", help="aa (AutoAttack standard), fab (FAB alone), self (the original "
                   "against itself with seed 1: its run-to-run agreement)")
    p.add_argument("--fab-steps", type=int, default=100)
    p.add_argument("--fab-restarts", type=int, default=1)
    p.add_argument("--aa-path", default=None, help="folder holding the original `autoattack` package")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="bench_autoattack.jsonl")
    p.add_argument("--resume", action="store_true", help="skip (victim, threat, comparison) lines already in --out")
    p.add_argument("--table", default=None, help="print the Markdown tables of --out files (comma-separated; "
                   "AutoAttack lines also combined over slices) and exit")
    args = p.parse_args(argv)
    if args.table:
        table([Path(t) for t in args.table.split(",") if t])
        return 0
    threats = []
    for threat in [t for t in args.threats.split(",") if t]:
        norm, _, eps = threat.partition(":")
        try:
            ok = norm in _AA_NORMS and 0 < float(eps) < float("inf")
        except ValueError:
            ok = False
        if not ok:
            print(f"--threats: {threat!r} is not NORM:EPS (NORM {' or '.join(_AA_NORMS)}, EPS > 0), e.g. --threats linf:0.3,l2:2.0")
            return 2
        threats.append((threat, norm, float(eps)))
    whats = [w for w in args.what.split(",") if w]
    if not whats or set(whats) - {"aa", "fab", "self"}:
        print(f"--what: unknown comparison(s) in {args.what!r}; valid: aa, fab, self")
        return 2
    if args.aa_path:
        sys.path.insert(0, args.aa_path)
    try:
        import autoattack  # noqa: F401
    except ImportError:
        print("the original AutoAttack is not importable: install it in a benchmark environment "
              "(pip install git+https://github.com/fra31/auto-attack) or pass --aa-path")
        return 2
    torch.set_num_threads(args.threads)
    from robench.data import eval_slice

    out = Path(args.out)
    done = set()
    if args.resume and out.exists():
        done = {(r["defense"], r["threat"], r["what"], r.get("offset", 0)) for r in map(json.loads, out.read_text().splitlines())
                if r}
    device = torch.device("cpu")
    for defense in [d for d in args.defenses.split(",") if d]:
        model, splits = load_victim(args.checkpoint_dir, defense, device)
        for threat, norm, eps in threats:
            for what in whats:
                if (defense, threat, what, args.offset) in done:
                    continue
                n = args.fab_n if what == "fab" else args.n
                _, x, y = eval_slice(splits, n, args.offset)
                x, y = x.to(device), y.to(device)
                t = time.perf_counter()
                if what == "aa":
                    r = compare_aa(model, x, y, norm, float(eps))
                elif what == "fab":
                    r = compare_fab(model, x, y, norm, args.fab_steps, args.fab_restarts)
                else:
                    r = compare_self(model, x, y, norm, float(eps))
                r.update({"defense": defense, "threat": threat, "what": what, "offset": args.offset,
                          "seconds": time.perf_counter() - t,
                          "threads": args.threads})
                with out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(json.dumps({k: v for k, v in r.items() if not isinstance(v, (list, dict))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
