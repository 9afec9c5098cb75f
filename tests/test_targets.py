import torch

from robench.evaluation.engine import choose_targets


def test_random_targets_are_seeded_uniform_and_never_the_label():
    y = torch.arange(10).repeat(500)
    logits = torch.zeros(len(y), 10)
    a = choose_targets("random", y, logits, 10, torch.Generator().manual_seed(3))
    b = choose_targets("random", y, logits, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and (a != y).all() and a.min() >= 0 and a.max() <= 9
    counts = torch.bincount(a, minlength=10).float()
    assert counts.min() > 0.8 * counts.mean()  # every class used about equally


def test_least_likely_and_fixed_targets():
    y = torch.tensor([0, 1, 2])
    logits = torch.tensor([[5.0, 1.0, -3.0], [0.0, 2.0, 1.0], [-1.0, 0.0, 4.0]])
    assert choose_targets("least_likely", y, logits, 3, torch.Generator()).tolist() == [2, 0, 0]
    assert choose_targets(1, y, logits, 3, torch.Generator()).tolist() == [1, 1, 1]


def test_expand_all_targets_rows_and_positions():
    from robench.evaluation.engine import expand_all_targets

    y, idx = torch.tensor([3, 0]), torch.tensor([10, 11])
    targets, pos, y2, idx2 = expand_all_targets(4, torch.tensor([4, 5]), y, idx)
    assert targets.tolist() == [0, 1, 2, 1, 2, 3] and y2.tolist() == [3, 3, 3, 0, 0, 0]
    assert idx2.tolist() == [10, 10, 10, 11, 11, 11] and pos.tolist() == [12, 13, 14, 15, 16, 17]


def test_target_all_runs_every_pair_and_resumes(tmp_path, ckpt_dir):
    """budget.target=all: one record per (sample, other class); an interrupted run resumes by (index, target)."""
    import json

    from robench.evaluation import results as R
    from conftest import run_cli

    run = tmp_path / "run"
    args = ["attack", "attack=fgsm", "budget.targeted=true", "budget.target=all", "budget.eps=0.3", "dataset.n_samples=4",
            "attack.batch_size=9", "progress=false", f"checkpoint_dir={ckpt_dir}", f"hydra.run.dir={run}"]
    p = run_cli(*args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    recs = R.read_records(run / "records.csv")
    assert len(recs) == 4 * 9
    for i in {r["index"] for r in recs}:
        mine = [r for r in recs if r["index"] == i]
        assert sorted(r["target"] for r in mine) == sorted(set(range(10)) - {mine[0]["label"]})
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_samples"] == 36 and summary["target"] == "all"
    # interrupted after its first two batches (18 rows): the rerun restores them and runs the other two
    R.write_records(run / "records.csv", recs[:18])
    (run / "summary.json").unlink()
    p = run_cli(*args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    again = R.read_records(run / "records.csv")
    assert json.loads((run / "summary.json").read_text())["resumed_batches"] == 2
    key = lambda r: (r["index"], r["target"])  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, recs))
    assert [r["success"] for r in sorted(again, key=key)] == [r["success"] for r in sorted(recs, key=key)]
