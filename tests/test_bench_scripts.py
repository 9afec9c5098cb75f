"""The benchmark scripts' argument errors: one line that says how to fix it, exit status 2, nothing run."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("args,what", [
    (["--threats", "linf"], "--threats: 'linf' is not NORM:EPS"),
    (["--threats", "linf:0.3,l3:2"], "--threats: 'l3:2' is not NORM:EPS"),
    (["--threats", "l2:-1"], "--threats: 'l2:-1' is not NORM:EPS"),
    (["--threats", "l2:nan"], "--threats: 'l2:nan' is not NORM:EPS"),
    (["--threats", "l1:10"], "--threats: 'l1:10' is not NORM:EPS (NORM linf or l2"),
    (["--what", "aa,fast"], "--what: unknown comparison(s) in 'aa,fast'"),
])
def test_bench_autoattack_refuses_bad_arguments_in_one_line(tmp_path, capsys, args, what):
    out = tmp_path / "out.jsonl"
    rc = _script("bench_autoattack").main(["--checkpoint-dir", str(tmp_path / "none"), "--out", str(out), *args])
    printed = capsys.readouterr().out
    assert rc == 2 and printed.startswith(what) and printed.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,what", [
    (["--victims", "foo"], "victim 'foo': unknown model 'foo'"),
    (["--attacks", "nes,bogus"], "unknown attack(s) ['bogus']"),
    (["--repeats", "0"], "--repeats, --n and --epochs must be >= 1"),
])
def test_bench_overhead_refuses_bad_arguments_in_one_line(tmp_path, capsys, args, what):
    rc = _script("bench_overhead").main(["--cache", str(tmp_path / "cache"), "--attacks", "nes", *args])
    printed = capsys.readouterr().out
    line = [ln for ln in printed.splitlines() if not ln.startswith("torch ")]  # the header line may come first
    assert rc == 2 and len(line) == 1 and line[0].startswith(what), printed
    assert not (tmp_path / "cache").exists()


def test_compare_versions_reads_every_benchmarks_ratio_lines():
    # bench_oracle's bare RATIO, bench_torchattacks' named one with columns after it, bench_overhead's victim and
    # attack; an earlier line of the same name is replaced, lines that are not ratios are skipped
    out = "\n".join(["RATIO 0.93", "RATIO pgd 0.21 12.3 s", "RATIO cw_mnist signopt 1.1280", "FLOOR cw_mnist signopt 1.07",
                     "RATIO lenet nes 1.2", "RATIO lenet nes 1.1459", "RATIO 3 4", "ratio pgd 9", "MAX_RATIO 1.63"])
    assert _script("compare_versions").parse_ratios(out) == {
        "oracle": 0.93, "pgd": 0.21, "cw_mnist/signopt": 1.128, "lenet/nes": 1.1459}
