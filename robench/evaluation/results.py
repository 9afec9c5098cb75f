"""Per-sample records -> summary -> tables, written atomically (the repository's DESIGN.md, "Results").

Files of an attack run folder:

* ``config.yaml``: the composed, resolved config, and ``overrides.yaml``: the command line's overrides
  (:func:`write_run_config`, once the run is accepted; robench's configs set ``hydra.output_subdir``
  to null, so Hydra writes no ``.hydra/`` folder);
* ``records.csv``: one row per evaluated sample (columns :data:`RECORD_COLUMNS`, then any extra
  columns an attack adds, e.g. ``dist_at_4000``), holding the rows of every *completed* batch:
  rewritten atomically after each batch, so an interrupted run resumes from it (:func:`read_records`);
  mid-batch, samples the oracle has finished get *pending* rows (column :data:`PENDING`, only while some
  exist; engine.Flusher): uncertified, for display, replaced when the batch completes, dropped on resume;
* ``progress.json``: batches / samples done and ``pending`` rows, for the sweep display;
* ``summary.json``: :func:`summarize`'s dictionary, schema version :data:`SCHEMA_VERSION`;
* ``summary.md``: the same numbers as a Markdown table;
* ``perturbation.csv``: shared-perturbation runs only (protocols.Shared): channel, row, col, value.

Summary schema, version 1 (README, "Metrics"):

=====================  ====================================================================
key                    meaning
=====================  ====================================================================
schema_version         1
command                "attack"
attack, model, dataset, defense, budget     plugin / config names
norm, eps, max_queries, targeted, target    the threat model
n_samples              samples evaluated (the slice of the test split)
n_correct              of which classified correctly before the attack
n_attacked             of which attacked AND originally correct (correct ones, minus targeted ones whose
                       target is the label): every headline number below is over these samples
n_success              of those, the ones whose success the oracle saw and re-verified
n_robust               originally correct samples not broken: correct and not (attacked and successful)
n_attacked_misclassified   correct_only=false only: misclassified samples that were attacked too; they
                       count in no headline number (as AutoAttack and RobustBench: a misclassified
                       sample is non-robust without an attack)
n_success_misclassified    of those, the ones the oracle certified (their records keep the result)
clean_accuracy         n_correct / n_samples
success_rate           n_success / n_attacked (attack success rate, ASR)
robust_accuracy        n_robust / n_samples; 0 <= robust_accuracy <= clean_accuracy, and
                       robust_accuracy = clean_accuracy * (1 - success_rate) when every correct sample
                       is attacked (untargeted runs, or targeted ones where no target is the label)
mean_queries, median_queries   over successful samples: queries up to the first success
mean_queries_all       over attacked samples: all queries spent
mean_l2, median_l2, mean_linf, median_linf, mean_l0, median_l0   over successful samples
mean_snr_db, median_snr_db, mean_db_x, median_db_x   audio runs only (inputs N x C x T), over successful
                       samples: SNR in dB and dB_x = dB(delta) - dB(x) [carlini2018audio] (records'
                       columns :data:`AUDIO_COLUMNS`)
success_at_queries     {budget: fraction of attacked samples successful within that many queries}
checkpoints            anytime curve (budget.checkpoints; [] when none): a list of objects
                       {queries, mean_distortion, median_distortion, success_rate, adversarial_rate}
                       over attacked samples, from the records' ``dist_at_<c>`` columns (the best
                       adversarial distortion, in the budget's norm, within c queries; NaN: none yet).
                       median_distortion counts a sample with no adversarial point as +inf (null
                       when that makes the median infinite); mean_distortion is over the samples
                       that have one; success_rate: fraction with distortion <= eps (+1e-5), or with
                       any adversarial point when eps is null; adversarial_rate: fraction with one
recheck_failed         successes seen during the attack that the final re-check did not confirm
total_queries          queries spent on all samples
seconds                wall time of the attack phase (all batches)
queries_per_second     total_queries / seconds
device, seed, robench_version, started, finished
checkpoint             the victim's checkpoint path (or "pretrained"; null in the Python API)
access                 the attack's declared access level, as the run's oracle enforced it
integrity              {violations: [{index, batch}], n_dropped, isolate}: points the referee's final check refused
shard, batch_size, resumed_batches, host, pid   how the run was executed
=====================  ====================================================================

Keys the evaluation protocols add (robench/evaluation/protocols.py), in every attack run unless noted:

=========================  ================================================================
first_sight_success_rate   (n_success + recheck_failed) / n_attacked: successes as first seen
recheck_repeats            fresh forward passes of the final re-check
confirm_repeats            confirmations of a success when seen (randomized victims)
defense_setup              {recipe, inputs: [{name, ...}], randomized, bpda, eot_samples}
undefended_clean_accuracy  with input defenses: the model's clean accuracy without them
adaptive, non_adaptive     adaptive protocol only: {bpda, eot_samples, confirm_repeats, n_success,
                           success_rate, first_sight_success_rate, robust_accuracy} of each run
detection                  detection protocol only: {detector, threshold, false_positive_rate,
                           n_adversarial, detection_rate, success_rate_undetected, ...}
ensemble, transfer         attack-specific figures (the attack's ``summary_extra()``)
attack_extra.autoattack    attack=autoattack: {version (the one run), requested, members}
shared                     shared-perturbation runs only (attacks that require a build set: uap, patch;
                           protocols.Shared): {kind ("additive" or "patch"), build_split,
                           build_offset, build_samples (requested), build_used (correctly classified and,
                           targeted, not of the target class), build_indices (the dataset indices of the
                           images that built the perturbation), build_queries, build_grad_queries,
                           build_max_queries (the largest count of one build image; each is capped at
                           budget.max_queries), build_seconds, build_success_rate (the perturbation's
                           success on its own build set, measured by the referee, uncounted)}, plus
                           perturbation_linf, perturbation_l2, perturbation_l0 (additive) or placement,
                           patch_side, row, col (patch; row and col null for a random placement). The
                           headline keys above cover the evaluation phase only (one query per sample);
                           ``perturbation.csv`` holds the perturbation's values
=========================  ================================================================

"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, TypedDict

import pandas as pd

from robench.errors import RobenchError

SCHEMA_VERSION = 1

RECORD_COLUMNS = ["index", "label", "target", "clean_pred", "attacked", "success", "queries",
                  "grad_queries", "queries_at_success", "l0", "l2", "linf", "seconds",
                  "batch", "batch_seconds", "recheck_failed"]
# batch: the global batch number (positions [b*B, (b+1)*B) of the unsharded slice, B = attack.batch_size);
# batch_seconds: wall time of that whole batch (same on each of its rows); recheck_failed: the oracle saw a
# success that the final re-check did not confirm. With these, a run's totals are recomputable from its
# records alone, which is what resuming and merging shards rely on (:func:`record_totals`).
PENDING = "pending"  # the column marking a pending row (mid-batch, uncertified; see the module docstring)
#: audio runs only (inputs N x C x T): perception measures of each adversarial point (robench/audio.py):
#: snr_db = 10 log10(|x|^2 / |delta|^2), db_x = dB(delta) - dB(x) with dB(v) = 20 log10 max|v_i| [carlini2018audio]
AUDIO_COLUMNS = ("snr_db", "db_x")


class Record(TypedDict, total=False):
    """One row of records.csv (:data:`RECORD_COLUMNS`, then ``dist_at_<c>`` and protocol columns
    such as ``detector_score``)."""

    index: int
    label: int
    target: int
    clean_pred: int
    attacked: bool
    success: bool
    queries: int
    grad_queries: int
    queries_at_success: int
    l0: float
    l2: float
    linf: float
    seconds: float
    batch: int
    batch_seconds: float
    recheck_failed: bool


def new_record(index: int, label: int, target: int, clean_pred: int, attacked: bool, batch: int,
               checkpoints: Iterable[int] = (), extra: Optional[Dict[str, Any]] = None) -> Record:
    """A sample's record before its batch runs (nothing spent, nothing found)."""
    nan = float("nan")
    r: Dict[str, Any] = {"index": int(index), "label": int(label), "target": int(target), "clean_pred": int(clean_pred),
                         "attacked": bool(attacked), "success": False, "queries": 0, "grad_queries": 0,
                         "queries_at_success": -1, "l0": nan, "l2": nan, "linf": nan, "seconds": 0.0,
                         "batch": int(batch), "batch_seconds": 0.0, "recheck_failed": False,
                         **{f"{CHECKPOINT_PREFIX}{c}": nan for c in checkpoints}, **(extra or {})}
    return r  # type: ignore[return-value]


def attack_fields(res, x0, rows: Optional[List[int]] = None) -> List[Dict[str, Any]]:
    """Per attacked row of a batch (or per row in ``rows``), the record fields the oracle's result
    gives (``res``: an :class:`~robench.referee.oracle.OracleResult`; ``x0``: the batch's clean images, CPU)."""
    from robench.geometry import distortion

    delta = res.best_x - x0 if rows is None else res.best_x[rows] - x0[rows]
    rows = list(range(len(res.success))) if rows is None else rows
    d = {k: distortion(delta, k) for k in ("l0", "l2", "linf")}
    if x0.dim() == 3:  # N x C x T signals (audio, robench/domain.py): perception measures (robench/audio.py)
        from robench.audio import db_x, snr_db

        clean = x0[rows]
        d.update(snr_db=snr_db(delta, clean), db_x=db_x(delta, clean))
    out = []
    for i, j in enumerate(rows):
        ok = bool(res.success[j])
        f = {"success": ok, "queries": int(res.queries[j]), "grad_queries": int(res.grad_queries[j]),
             "queries_at_success": int(res.queries_at_success[j]) if ok else -1,
             "seconds": float(res.seconds_at_success[j]) if ok else res.seconds,
             "recheck_failed": bool(res.claimed[j] and not ok)}
        if res.adversarial[j]:
            f.update({k: float(v[i]) for k, v in d.items()})
        for c, v in zip(res.checkpoints, res.dist_at[j].tolist()):
            f[f"{CHECKPOINT_PREFIX}{c}"] = v if v != float("inf") else float("nan")
        out.append(f)
    return out


#: metric rows of the one-run table, in display order: (key, label, format)
TABLE_ROWS = [
    ("n_samples", "samples", "{:d}"), ("clean_accuracy", "clean accuracy", "{:.2%}"),
    ("n_attacked", "attacked", "{:d}"), ("success_rate", "attack success rate", "{:.2%}"),
    ("robust_accuracy", "robust accuracy", "{:.2%}"), ("mean_queries", "mean queries (successes)", "{:.1f}"),
    ("median_queries", "median queries (successes)", "{:.1f}"), ("mean_l2", "mean L2", "{:.4f}"),
    ("median_l2", "median L2", "{:.4f}"), ("mean_linf", "mean Linf", "{:.4f}"),
    ("median_linf", "median Linf", "{:.4f}"), ("recheck_failed", "re-check failed", "{:d}"),
    ("seconds", "seconds", "{:.2f}"), ("queries_per_second", "queries / second", "{:.0f}"),
]


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename: readers never see a partial file (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def record_columns(records: List[Dict[str, Any]]) -> List[str]:
    """:data:`RECORD_COLUMNS`, then any extra keys of the records (first-seen order), kept generically."""
    extra: Dict[str, None] = {}
    for r in records:
        for k in r:
            if k not in RECORD_COLUMNS:
                extra.setdefault(k)
    return RECORD_COLUMNS + list(extra)


def write_records(path: Path, records: List[Dict[str, Any]]) -> None:
    atomic_write_text(path, pd.DataFrame(records, columns=record_columns(records)).to_csv(index=False))


def read_records(path: Path) -> List[Dict[str, Any]]:
    """records.csv -> list of dicts with Python scalars (extra columns kept)."""
    df = pd.read_csv(path)
    for c in ("attacked", "success", "recheck_failed", PENDING):
        if c in df:
            df[c] = df[c].astype(str).str.lower().isin(("true", "1", "1.0"))
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in df.to_dict("records")]


def record_totals(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Run totals recomputed from records: attack seconds (sum of each batch's wall time, once per
    batch), re-check failures, batches."""
    df = pd.DataFrame(records, columns=record_columns(records))
    per_batch = df.dropna(subset=["batch"]).groupby("batch")["batch_seconds"].first()
    return {"seconds": float(per_batch.sum()), "recheck_failed": int(df["recheck_failed"].fillna(False).astype(bool).sum()),
            "n_batches": int(len(per_batch))}


#: config keys that do not change what a run computes (ignored when checking that a resume matches)
VOLATILE_KEYS = ("progress", "quiet", "resume")


def config_differences(a: Dict[str, Any], b: Dict[str, Any], prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two plain config dicts (volatile keys ignored at top level)."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        if not prefix and k in VOLATILE_KEYS:
            continue
        va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


#: per-checkpoint record columns: ``dist_at_<c>`` for each checkpoint c (anytime curve)
CHECKPOINT_PREFIX = "dist_at_"


def checkpoint_columns(keys: Iterable[str]) -> List[str]:
    """The ``dist_at_<c>`` names among ``keys``, in increasing c."""
    cols = {k for k in keys if str(k).startswith(CHECKPOINT_PREFIX)}
    return sorted(cols, key=lambda k: int(k[len(CHECKPOINT_PREFIX):]))


def default_checkpoints(max_queries: int) -> List[int]:
    """Anytime-curve checkpoints when ``budget.checkpoints`` is null and the attack minimizes
    distortion: 1000, 2000, 4000, ... below max_queries, then max_queries (below 2000 queries:
    powers of ten below max_queries, then max_queries)."""
    out, b = [], (1000 if max_queries > 1000 else 10)
    step = 2 if max_queries > 1000 else 10
    while b < max_queries:
        out.append(b)
        b *= step
    return out + [int(max_queries)]


def checkpoint_summary(att: pd.DataFrame, eps: Any, tol: float = 1e-5) -> List[Dict[str, Any]]:
    """Per checkpoint: mean / median best distortion and success rate at threshold eps (see the schema)."""
    out = []
    n = len(att)
    for col in checkpoint_columns(att.columns):
        d = pd.to_numeric(att[col], errors="coerce").astype(float)
        has = d.notna() & (d != float("inf"))
        med = d.where(has, float("inf")).median() if n else float("nan")
        ok = has if eps is None else has & (d <= float(eps) + tol)
        out.append({"queries": int(col[len(CHECKPOINT_PREFIX):]),
                    "mean_distortion": float(d[has].mean()) if has.any() else float("nan"),
                    "median_distortion": None if med == float("inf") else float(med),
                    "success_rate": float(ok.sum()) / n if n else float("nan"),
                    "adversarial_rate": float(has.sum()) / n if n else float("nan")})
    return out


def _stat(vals: Iterable[float], fn) -> float:
    v = [float(x) for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(fn(v)) if v else float("nan")


def _median(v):
    return pd.Series(v).median()


def _mean(v):
    return sum(v) / len(v)


def success_budgets(max_queries: int) -> List[int]:
    """1, 10, 100, ... below max_queries, and max_queries itself."""
    out, b = [], 1
    while b < max_queries:
        out.append(b)
        b *= 10
    return out + [int(max_queries)]


def summarize(records: List[Dict[str, Any]], meta: Dict[str, Any]) -> Dict[str, Any]:
    df = pd.DataFrame(records, columns=record_columns(records))
    n = len(df)
    correct = (df.clean_pred == df.label).astype(bool)
    attacked, success = df.attacked.astype(bool), df.success.astype(bool)
    n_correct = int(correct.sum())
    att = df[attacked & correct]  # headline numbers: originally correct, attacked samples (schema above)
    mis = df[attacked & ~correct]  # correct_only=false: attacked although misclassified; in no headline number
    succ = att[att.success.astype(bool)]
    n_att, n_succ = len(att), len(succ)
    n_robust = int((correct & ~(attacked & success)).sum())
    total_q = int(df.queries.sum())
    seconds = float(meta.get("seconds", float("nan")))
    out = {
        "schema_version": SCHEMA_VERSION, "command": "attack",
        **{k: meta.get(k) for k in ("attack", "model", "dataset", "defense", "budget", "norm", "eps",
                                    "max_queries", "targeted", "target")},
        "n_samples": n, "n_correct": n_correct, "n_attacked": n_att, "n_success": n_succ, "n_robust": n_robust,
        "n_attacked_misclassified": len(mis), "n_success_misclassified": int(mis.success.astype(bool).sum()),
        "clean_accuracy": n_correct / n if n else float("nan"),
        "success_rate": n_succ / n_att if n_att else float("nan"),
        "robust_accuracy": n_robust / n if n else float("nan"),
        "mean_queries": _stat(succ.queries_at_success, _mean),
        "median_queries": _stat(succ.queries_at_success, _median),
        "mean_queries_all": _stat(att.queries, _mean),
    }
    for k in ("l2", "linf", "l0") + tuple(k for k in AUDIO_COLUMNS if k in df):
        out[f"mean_{k}"] = _stat(succ[k], _mean)
        out[f"median_{k}"] = _stat(succ[k], _median)
    mq = int(meta.get("max_queries") or 1)
    out["success_at_queries"] = {str(b): (int((succ.queries_at_success <= b).sum()) / n_att if n_att else float("nan"))
                                 for b in success_budgets(mq)}
    out["checkpoints"] = checkpoint_summary(att, meta.get("eps"))
    out["recheck_failed"] = int(meta.get("recheck_failed", 0))
    out["total_queries"] = total_q
    out["seconds"] = seconds
    out["queries_per_second"] = total_q / seconds if seconds and seconds > 0 else float("nan")
    for k in ("device", "seed", "robench_version", "started", "finished"):
        out[k] = meta.get(k)
    return out


def _fmt(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    try:
        return fmt.format(int(v) if fmt == "{:d}" else v)
    except (ValueError, TypeError):
        return str(v)


#: rows added to the table of audio runs (their summaries hold these keys; image runs' do not)
AUDIO_TABLE_ROWS = [("mean_snr_db", "mean SNR dB (successes)", "{:.1f}"),
                    ("mean_db_x", "mean dB_x (successes)", "{:.1f}")]


def summary_rows(s: Dict[str, Any]) -> List[tuple]:
    rows = TABLE_ROWS + [r for r in AUDIO_TABLE_ROWS if r[0] in s]
    return [(label, _fmt(s.get(k), fmt)) for k, label, fmt in rows]


def title(s: Dict[str, Any]) -> str:
    tgt = f", targeted ({s.get('target')})" if s.get("targeted") else ""
    return (f"{s.get('attack')} on {s.get('dataset')}/{s.get('model')} (defense {s.get('defense')}), "
            f"{s.get('norm')} eps={s.get('eps')}, max {s.get('max_queries')} queries{tgt}")


def checkpoint_rows(s: Dict[str, Any]) -> List[tuple]:
    """(queries, mean, median, success rate) strings of the anytime curve, one per checkpoint."""
    return [(str(c["queries"]), _fmt(c.get("mean_distortion"), "{:.4f}"),
             "inf" if c.get("median_distortion") is None else _fmt(c["median_distortion"], "{:.4f}"),
             _fmt(c.get("success_rate"), "{:.2%}")) for c in s.get("checkpoints") or []]


CHECKPOINT_HEADER = ("queries", "mean dist.", "median dist.", "success rate (<= eps)")


def summary_markdown(s: Dict[str, Any], extra_rows: Optional[List[tuple]] = None, extra_title: str = "") -> str:
    """summary.md: the metrics table, the anytime curve when there is one, then ``extra_rows`` (the
    protocols' rows, e.g. the defense table) under the heading ``extra_title``."""
    lines = [f"# {title(s)}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in summary_rows(s)]
    if s.get("checkpoints"):
        lines += ["", f"Anytime curve ({s.get('norm')} distortion of the best adversarial point within the queries):", "",
                  "| " + " | ".join(CHECKPOINT_HEADER) + " |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in checkpoint_rows(s)]
    md = "\n".join(lines) + "\n"
    if extra_rows:
        md += f"\n## {extra_title}\n\n| metric | value |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in extra_rows)
    return md


def json_default(o):
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def one_line(s: Dict[str, Any], run_dir: Any = "") -> str:
    """One line per run, for sweeps: the threat model and the headline numbers."""
    return (f"{s.get('attack')} {s.get('dataset')}/{s.get('model')}/{s.get('defense')} {s.get('budget')}: "
            f"success {_fmt(s.get('success_rate'), '{:.2%}')}, robust acc {_fmt(s.get('robust_accuracy'), '{:.2%}')}, "
            f"median queries {_fmt(s.get('median_queries'), '{:.1f}')}  ({run_dir})")


def print_summary(s: Dict[str, Any], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"[bold]{title(s)}")
    t = Table(show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for a, b in summary_rows(s):
        t.add_row(a, b)
    console.print(t)
    if s.get("checkpoints"):
        c = Table(title=f"anytime curve ({s.get('norm')})", show_header=True, header_style="bold")
        for h in CHECKPOINT_HEADER:
            c.add_column(h, justify="right")
        for r in checkpoint_rows(s):
            c.add_row(*r)
        console.print(c)
