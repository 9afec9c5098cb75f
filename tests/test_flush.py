"""Mid-batch flushing (robench.evaluation.engine.Flusher): rows of samples the oracle has finished reach
records.csv before their batch ends, as *pending* rows; a run killed mid-batch and resumed gives the
records of an uninterrupted run."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import robench
import robench.evaluation.engine
from robench.evaluation import results as R
from robench.attacks.base import Attack, keep_active

MAX_Q, EPS, N, B = 4, 0.8, 6, 3  # eps 0.8: one of the 6 images falls to noise at 76% a query, four at <= 2%
TIME_COLUMNS = ["seconds", "batch_seconds"]  # wall times: the only columns two runs may differ in


class Killed(Exception):
    """Stands in for a SIGKILL: nothing after it runs, the files stay as they were."""


class NoiseThenLast(Attack):
    """Uniform noise in the eps-ball, one row per active sample per call (the batch's generator), on
    every sample but the batch's last until the oracle finishes them (success or budget); then
    ``hook(view)``; then the last sample the same way; then ``last(view)``."""

    access = "label"
    hook = last = None

    def run(self, oracle, generator):
        x0 = oracle.x0

        def spend(idx):
            while len(idx):
                u = torch.rand(x0[idx].shape, generator=generator, device=x0.device)
                oracle.labels((x0[idx] + (2 * u - 1) * oracle.eps).clamp(0, 1), idx)
                idx, = keep_active(oracle, idx)

        spend(torch.arange(oracle.n - 1))
        if NoiseThenLast.hook is not None:
            NoiseThenLast.hook(oracle)
        spend(torch.tensor([oracle.n - 1]))
        if NoiseThenLast.last is not None:
            NoiseThenLast.last(oracle)


@pytest.fixture
def xy(test_xy):
    return test_xy[0][:N], test_xy[1][:N]


def _run(victim, xy, run_dir):
    x, y = xy
    return robench.evaluate(victim, x, y, attack=NoiseThenLast(), budget=robench.Budget("linf", EPS, max_queries=MAX_Q),
                            seed=5, batch_size=B, run_dir=run_dir)


def _stable(path):
    """records.csv as text, wall-time columns left out."""
    return pd.read_csv(path).drop(columns=TIME_COLUMNS).to_csv(index=False)


@pytest.fixture
def flush_always(monkeypatch):
    monkeypatch.setattr(robench.evaluation.engine, "FLUSH_SECONDS", 0.0)
    yield
    NoiseThenLast.hook = NoiseThenLast.last = None


def test_finished_samples_reach_the_disk_before_their_batch_ends(victim, xy, tmp_path, flush_always):
    run_dir, seen = tmp_path / "run", []

    def look(view):  # every sample of the batch but the last is finished; the last has not been queried
        assert view.queries[-1] == 0 and not bool(view.active[:-1].any())
        seen.append((pd.DataFrame(R.read_records(run_dir / "records.csv")),
                     json.loads((run_dir / "progress.json").read_text())))

    NoiseThenLast.hook = look
    res = _run(victim, xy, run_dir)
    assert len(seen) == 2  # one look per batch
    for bt, (df, prog) in enumerate(seen):
        done, pend = df[~df[R.PENDING]], df[df[R.PENDING]]
        assert len(done) == B * bt and prog["batches_done"] == bt  # the batches completed before this one
        assert pend["index"].tolist() == list(range(B * bt, B * bt + B - 1)) and prog["pending"] == B - 1
        assert (pend.batch == bt).all()
        # the oracle's counts: a pending sample either succeeded or spent its whole budget
        assert ((pend.queries == MAX_Q) | pend.success).all() and (pend.queries <= MAX_Q).all()
        assert (pend.queries[pend.success] == pend.queries_at_success[pend.success]).all()
        final = res.records.set_index("index").loc[pend["index"]]
        for c in ("success", "queries", "queries_at_success", "linf", "l2"):
            assert pend[c].tolist() == pytest.approx(final[c].tolist(), nan_ok=True), c
    assert 0 < res.summary["n_success"] < N  # some samples succeed, some run out of budget
    final = pd.read_csv(run_dir / "records.csv")
    assert R.PENDING not in final.columns and final["index"].tolist() == list(range(N))
    assert json.loads((run_dir / "progress.json").read_text())["pending"] == 0


@pytest.mark.parametrize("when", ["mid", "end"])
def test_a_run_killed_mid_batch_resumes_to_the_uninterrupted_records(victim, xy, tmp_path, flush_always, when):
    """Killed in batch 1 with 2 of its 3 samples pending ("mid"), or all 3 ("end": every sample
    finished, the batch not yet certified): batch 1 must be re-run, not restored from pending rows."""
    ref = _run(victim, xy, tmp_path / "ref")
    batches = []

    def kill_in_batch_1(view):
        batches.append(view.x0)
        if len(batches) == 2:
            raise Killed

    setattr(NoiseThenLast, "hook" if when == "mid" else "last", kill_in_batch_1)
    run_dir = tmp_path / "killed"
    with pytest.raises(Killed):
        _run(victim, xy, run_dir)
    left = pd.read_csv(run_dir / "records.csv")
    n_pending = B - 1 if when == "mid" else B
    assert left[R.PENDING].tolist() == [False] * B + [True] * n_pending  # batch 0 complete, batch 1 pending
    assert not (run_dir / "summary.json").exists()
    NoiseThenLast.hook = NoiseThenLast.last = None
    res = _run(victim, xy, run_dir)
    assert res.summary["resumed_batches"] == 1  # batch 0 restored, batch 1 re-run whole with its own seed
    assert _stable(run_dir / "records.csv") == _stable(tmp_path / "ref" / "records.csv")
    assert res.summary["total_queries"] == ref.summary["total_queries"]
    assert res.summary["n_success"] == ref.summary["n_success"]


def test_no_pending_rows_between_checks(victim, xy, tmp_path, monkeypatch):
    """A batch shorter than the wait writes no pending row, and flushing changes nothing in what a run
    computes (same records as a run that checks after every call)."""
    run_dir, seen = tmp_path / "run", []
    NoiseThenLast.hook = lambda view: seen.append(pd.read_csv(run_dir / "records.csv"))
    try:
        monkeypatch.setattr(robench.evaluation.engine, "FLUSH_SECONDS", 3600.0)
        monkeypatch.setattr(robench.evaluation.engine, "FLUSH_FIRST", 3600.0)
        _run(victim, xy, run_dir)
        monkeypatch.setattr(robench.evaluation.engine, "FLUSH_SECONDS", 0.0)
        _run(victim, xy, tmp_path / "always")
    finally:
        NoiseThenLast.hook = None
    assert [len(df) for df in seen[:2]] == [0, B] and all(R.PENDING not in df.columns for df in seen[:2])
    assert _stable(run_dir / "records.csv") == _stable(tmp_path / "always" / "records.csv")


def test_flush_schedule(monkeypatch):
    """Checks every ``first`` seconds until one finds a finished sample; after each write the wait
    doubles up to ``seconds``; a sample is handed over once, with the oracle's counts."""
    from robench.evaluation.engine import Flusher
    from robench.referee.oracle import Oracle

    clock = [0.0]
    monkeypatch.setattr(robench.evaluation.engine.time, "monotonic", lambda: clock[0])
    calls = []
    fl = Flusher(lambda bt, rows, f: calls.append((clock[0], bt, rows.tolist(), [r["queries"] for r in f])), 4.0, 1.0)
    lin = torch.nn.Linear(4, 3)
    with torch.no_grad():  # always class 0: no success, samples finish by spending their budget
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    model = torch.nn.Sequential(torch.nn.Flatten(), lin)
    x0 = torch.zeros(3, 1, 2, 2)
    oracle = Oracle(model, x0, torch.zeros(3, dtype=torch.long), access="label", eps=0.1, max_queries=2, watch=fl)
    fl.start(7, torch.tensor([10, 11, 12]), x0, oracle)

    def query(i, t):
        clock[0] = t
        oracle.labels(x0[i:i + 1], torch.tensor([i]))

    query(0, 0.5)   # before the first wait: no check
    query(0, 1.0)   # sample 0 spent its 2 queries: written at the check of t=1
    query(1, 1.5)   # wait now 2 s: no check before t=3
    query(1, 2.9)   # sample 1 finished, but not checked yet
    query(2, 3.0)   # checked: sample 1 written (sample 2 still has a query left); wait now 4 s
    query(2, 6.9)   # sample 2 finished; next check at t=7
    assert calls == [(1.0, 7, [10], [2]), (3.0, 7, [11], [2])]
    fl()  # t=6.9: before the next check (the watch runs after answered calls only)
    clock[0] = 7.0
    fl()
    assert calls[-1] == (7.0, 7, [12], [2]) and len(calls) == 3
