"""The report of a real sweep, as a user reads it: `robench attack -m budget.eps=0.1,0.2,0.3
attack=pgd,fgsm,square` (tiny: 20 samples, 50 queries) then `robench report DIR --plots`, checked in its
files and in headless Chromium (tests/chromium.py; Debian's `chromium`, which .ci/run installs)."""
import os
import struct

import pandas as pd
import pytest

from tests.chromium import MEASURE, STICKY, Chromium, find_chromium
from tests.conftest import run_cli

EPS = (0.1, 0.2, 0.3)
ATTACKS = ("pgd", "fgsm", "square")


@pytest.fixture(scope="module")
def eps_sweep(tmp_path_factory, ckpt_dir):
    """The issue-30 sweep, reported with plots: 9 runs of 20 samples (about 10 s on 2 CPU cores)."""
    d = tmp_path_factory.mktemp("eps_sweep")
    sweep = d / "sweep"
    p = run_cli("attack", "-m", f"budget.eps={','.join(map(str, EPS))}", f"attack={','.join(ATTACKS)}",
                "dataset.n_samples=20", "attack.batch_size=20", "budget.max_queries=50", "progress=false",
                f"checkpoint_dir={ckpt_dir}", f"hydra.sweep.dir={sweep}", cwd=d)
    assert p.returncode == 0, p.stderr
    p = run_cli("report", str(sweep), "--plots", "-q", cwd=d)
    assert p.returncode == 0, p.stderr
    return sweep


def test_eps_sweep_pivots_put_eps_on_an_axis(eps_sweep):
    runs = pd.read_csv(eps_sweep / "report.csv")
    assert len(runs) == 9 and sorted(set(runs.attack)) == sorted(ATTACKS)
    for value, column in (("robust_accuracy", "robust acc"), ("success_rate", "success rate"),
                          ("median_queries", "median queries"), ("median_l2", "median L2")):
        p = pd.read_csv(eps_sweep / f"pivot-{value}.csv", index_col=0)
        assert list(p.columns) == [f"none / {e}" for e in EPS], value
        assert sorted(p.index) == sorted(ATTACKS), value
        for _, r in runs.iterrows():  # every cell is exactly one run's number: none is an average
            got, want = p.loc[r.attack, f"none / {r.budget.split('_')[1]}"], r[column]
            assert (pd.isna(got) and pd.isna(want)) or got == pytest.approx(want), (value, r.attack, r.budget)
    md = (eps_sweep / "report.md").read_text()
    assert "cell(s) average" not in md and "> added eps to the columns" in md
    # the robust-accuracy curve holds the score-based runs too, in their own style
    from robench.report.collect import collect
    from robench.report.figures import figure_data

    figs = {f.name: f for f in figure_data(collect([str(eps_sweep)]).attacks, [])[0]}
    series = {s.label: (s.family, s.x) for s in figs["robust_acc_vs_eps"].series}
    assert series == {"fgsm": ("white-box", list(EPS)), "pgd": ("white-box", list(EPS)),
                      "square": ("score-based", list(EPS))}


def _png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_report_in_headless_chromium(eps_sweep, tmp_path):
    """Opened at a 1,280 px viewport: the page is no wider than the viewport (the wide all-runs table
    scrolls inside its own box, its header kept in view when the box scrolls), every image and plot
    the page shows has loaded and decoded, every other resource it links exists, and a screenshot is
    taken."""
    if not find_chromium():
        if os.environ.get("CI"):
            pytest.fail("no Chromium: .ci/run installs Debian's chromium package")
        pytest.skip("no Chromium (apt-get install chromium)")
    html = eps_sweep / "report.html"
    pngs = sorted(p.stem for p in eps_sweep.glob("*.png"))
    assert pngs == ["robust_acc_vs_eps", "success_vs_queries"]
    shot = tmp_path / "report.png"
    with Chromium() as b:
        b.open(html, width=1280, height=900)
        m = b.evaluate(MEASURE)
        b.screenshot(shot)
        box_top, head_top, row_top = b.evaluate(STICKY)
    assert m["innerWidth"] == 1280
    assert m["scrollWidth"] <= m["innerWidth"], f"the page is {m['scrollWidth']} px wide at a 1280 px viewport"
    assert sorted(i["alt"] for i in m["images"]) == pngs
    for img in m["images"]:
        assert img["complete"] and img["naturalWidth"] > 100 and img["naturalHeight"] > 100, img
        assert 0 < img["shownWidth"] <= 1280, img
    for url in m["links"]:  # the page is self-contained; anything it does link must be there
        assert url.startswith("file://") and os.path.exists(url[len("file://"):]), url
    tables = {t["heading"]: t for t in m["tables"]}
    assert set(tables) == {f"{v}: attack by defense x eps" for v in
                           ("success_rate", "median_queries", "median_l2", "robust_accuracy")} | {"all runs"}
    for t in tables.values():
        assert t["right"] <= m["innerWidth"], t
    wide = tables["all runs"]
    assert wide["scrollWidth"] > wide["clientWidth"], "the all-runs table should scroll inside its box"
    assert row_top < box_top <= head_top <= box_top + 2, (box_top, head_top, row_top)  # header stays, rows pass under
    w, h = _png_size(shot)
    assert w == 1280 and h > 900
