"""Stage 1 of ``robench report``: one walk over the run folders -> attack and training summaries.

* Every ``summary.json`` below the given folders is read once (:func:`collect`), with one policy for
  the files that cannot be used (:func:`read_summary`): unreadable, not JSON, not a robench summary or
  missing a field the tables need -> skipped, with a one-line note naming the file and what is wrong.
  When summaries were found but none could be used, the report stops with one line saying why.
* Each run's overrides come from :func:`run_overrides`, the only reader of them.
* Shards are merged once, here (:func:`merge_shards`): attack runs whose configs are equal except
  ``dataset.shard`` and that together hold every shard ``0/n .. n-1/n`` become one run, whose numbers
  are recomputed from the concatenated records (so they equal the unsharded run's; README,
  "Sharding"). Every later stage (tables, renderers, plots) sees the merged runs only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from robench.evaluation import results as R
from robench.errors import RobenchError

#: per ``command``: the summary keys the tables need; a summary without one of them is skipped
REQUIRED_KEYS = {
    "attack": ("attack", "model", "dataset", "defense", "budget", "n_samples", "clean_accuracy", "success_rate",
               "robust_accuracy"),
    "train-defense": ("model", "dataset", "defense", "clean_accuracy"),
}


def run_overrides(run_dir: Path) -> str:
    """The overrides that made this run, minus display-only ones (robench's own ``overrides.yaml``, else
    ``.hydra/overrides.yaml`` of older runs: robench.evaluation.folder.run_overrides)."""
    from robench.evaluation.folder import run_overrides as overrides_of

    return overrides_of(run_dir)


def read_summary(f: Path) -> Tuple[Optional[Dict[str, Any]], str]:
    """(summary, "") for a usable ``summary.json``, else (None, what is wrong with it, in a few words)."""
    try:
        s = json.loads(Path(f).read_text())
    except OSError as e:
        return None, f"cannot be read ({e.__class__.__name__})"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"not valid JSON ({e.__class__.__name__}); delete or re-run it"
    if not isinstance(s, dict):
        return None, "not a JSON object"
    cmd = s.get("command")
    if cmd not in REQUIRED_KEYS:
        return None, (f"lacks a valid 'command' ({' or '.join(REQUIRED_KEYS)}, got {cmd!r}): not a robench "
                      f"summary, or truncated")
    missing = [k for k in REQUIRED_KEYS[cmd] if k not in s]
    if missing:
        return None, f"{cmd} summary lacks {', '.join(missing)}; re-run it with this robench"
    return s, ""


@dataclass
class Runs:
    """What the collect stage hands on: attack runs (shards merged), training runs, notes for the
    report (incomplete shard sets) and the summaries it skipped (one line each)."""

    attacks: List[Dict[str, Any]] = field(default_factory=list)
    trains: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)


def _natural(path: Path) -> List[Any]:
    """Sort key of a path under which sweep job 2 comes before job 10."""
    import re

    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for part in path.parts for t in re.split(r"(\d+)", part) if t]


def summary_files(dirs: List[str]) -> List[Path]:
    """Every ``summary.json`` below ``dirs`` (or the files themselves), each once, sweep jobs in
    numeric order (2 before 10)."""
    files, seen = [], set()
    for d in dirs:
        p = Path(d)
        if not p.exists():
            raise RobenchError(f"robench report: {p} does not exist")
        for f in ([p] if p.is_file() else sorted(p.rglob("summary.json"), key=_natural)):
            if f.resolve() not in seen:
                seen.add(f.resolve())
                files.append(f)
    return files


def collect(dirs: List[str]) -> Runs:
    """The runs below ``dirs``: each summary read once, each with ``run`` (its folder) and
    ``overrides``; shards merged. Raises when no summary is found or none can be used."""
    files = summary_files(dirs)
    runs = Runs()
    for f in files:
        s, problem = read_summary(f)
        if s is None:
            runs.skipped.append(f"skipped {f}: {problem}")
            continue
        s["run"] = str(f.parent)
        s["overrides"] = run_overrides(f.parent)
        (runs.attacks if s["command"] == "attack" else runs.trains).append(s)
    where = " ".join(dirs)
    if not files:
        raise RobenchError(f"robench report: no runs (summary.json) under {where}")
    if not runs.attacks and not runs.trains:
        more = f" (and {len(runs.skipped) - 1} more)" if len(runs.skipped) > 1 else ""
        raise RobenchError(f"robench report: no usable runs under {where}: {runs.skipped[0]}{more}")
    runs.attacks, runs.notes = merge_shards(runs.attacks)
    return runs


# ---------------------------------------------------------------------------------------- shards
def _run_config(run_dir: Path) -> Dict[str, Any]:
    import yaml

    f = run_dir / "config.yaml"
    try:
        return (yaml.safe_load(f.read_text()) or {}) if f.exists() else {}
    except yaml.YAMLError:
        return {}


def _shard_of(s: Dict[str, Any], cfg: Dict[str, Any]) -> Optional[Tuple[int, int]]:
    from robench.data import parse_shard

    shard = s.get("shard", (cfg.get("dataset") or {}).get("shard"))
    if shard in (None, "", "null"):
        return None
    try:
        i, n = parse_shard(shard)
    except RobenchError:
        return None
    return (i, n) if n > 1 else None


def merge_shards(runs: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Replace each complete set of shards (same config but ``dataset.shard``) by one merged run.

    Returns (runs, notes). Incomplete sets stay as separate rows, with a note."""
    out, groups, notes = [], {}, []
    for s in runs:
        cfg = _run_config(Path(s["run"]))
        sh = _shard_of(s, cfg)
        if sh is None:
            out.append(s)
            continue
        key_cfg = {k: v for k, v in cfg.items() if k not in R.VOLATILE_KEYS}
        key_cfg["dataset"] = {k: v for k, v in (key_cfg.get("dataset") or {}).items() if k != "shard"}
        key = json.dumps(key_cfg, sort_keys=True, default=str) + f"|n={sh[1]}"
        groups.setdefault(key, []).append((sh, s))
    for members in groups.values():
        n = members[0][0][1]
        have = sorted({sh[0] for sh, _ in members})
        if have != list(range(n)) or len(members) != n:
            notes.append(f"shards {','.join(map(str, have))} of {n} found (runs {', '.join(s['run'] for _, s in members)}): "
                         f"not merged; run the missing shards")
            out.extend(s for _, s in members)
            continue
        out.append(merged_summary([s for _, s in sorted(members, key=lambda m: m[0][0])]))
    return out, notes


def merged_summary(shards: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One run's summary from its shards' records, recomputed by :func:`robench.evaluation.results.summarize`
    (its anytime curve included), not averaged."""
    records: List[Dict[str, Any]] = []
    for s in shards:
        f = Path(s["run"]) / "records.csv"
        if not f.exists():
            raise RobenchError(f"robench report: shard run {s['run']} has no records.csv; re-run that shard")
        records += R.read_records(f)
    records.sort(key=lambda r: (r["index"], r["target"]))
    idx = [(r["index"], r["target"]) for r in records]  # (index, target): budget.target=all has a row per target
    if len(set(idx)) != len(idx):
        raise RobenchError(f"robench report: shards {', '.join(s['run'] for s in shards)} overlap (a sample appears twice)")
    first = shards[0]
    totals = R.record_totals(records)
    meta = {k: first.get(k) for k in ("attack", "model", "dataset", "defense", "budget", "norm", "eps", "max_queries",
                                      "targeted", "target", "device", "seed", "robench_version")}
    meta.update(seconds=totals["seconds"], recheck_failed=totals["recheck_failed"],
                started=min(str(s.get("started")) for s in shards), finished=max(str(s.get("finished")) for s in shards))
    out = R.summarize(records, meta)
    for k in ("checkpoint", "access", "batch_size"):
        out[k] = first.get(k)
    out["shards"] = len(shards)
    out["shard_runs"] = [s["run"] for s in shards]
    common = Path(shards[0]["run"]).parent
    out["run"] = f"{common}/{{{','.join(Path(s['run']).name for s in shards)}}}"
    ov = [set(s["overrides"].split()) for s in shards]
    out["overrides"] = " ".join(o for o in shards[0]["overrides"].split() if all(o in x for x in ov)) + f" (merged {len(shards)} shards)"
    return out


def read_run_records(s: Dict[str, Any]):
    """The records of a run as a DataFrame (a merged run's shards concatenated); None when a
    records.csv is missing."""
    import pandas as pd

    frames = []
    for r in s.get("shard_runs") or [s.get("run")]:
        f = Path(str(r)) / "records.csv"
        if not f.exists():
            return None
        frames.append(pd.DataFrame(R.read_records(f)))
    return pd.concat(frames, ignore_index=True)
