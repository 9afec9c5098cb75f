"""The targeted success matrix of a run (source class by target class), as in the GenAttack thesis's
Fig. 3.2 [alzantot2019 §3.5.1]: for ``budget.target=all`` runs, every cell is one (source, target) pair
of classes. ``robench report`` can call :func:`plot_success_matrix` on a targeted run's records.

The data: :func:`success_matrix` (pandas, no drawing); the figure: :func:`plot_success_matrix`
(matplotlib, the optional ``plots`` extra).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import pandas as pd

from robench.errors import RobenchError


def success_matrix(records: pd.DataFrame, num_classes: Optional[int] = None) -> pd.DataFrame:
    """Fraction of successful attacks per (source = true label, target) over the attacked rows of a
    targeted run's records (columns ``label``, ``target``, ``attacked``, ``success``): a
    ``num_classes x num_classes`` frame, rows the source, columns the target, NaN where no row was
    attacked (the diagonal, always). ``.attrs["counts"]`` holds the attacked rows per cell."""
    need = {"label", "target", "attacked", "success"}
    if not need <= set(records.columns):
        raise RobenchError(f"a success matrix needs the records' columns {', '.join(sorted(need))}; got "
                           f"{', '.join(map(str, records.columns))}")
    att = records[records["attacked"].astype(bool)]
    if (att["target"] < 0).any() or att.empty:
        raise RobenchError("a success matrix needs a targeted run with attacked rows (budget.targeted=true)")
    k = int(num_classes) if num_classes is not None else int(max(att["label"].max(), att["target"].max())) + 1
    labels = list(range(k))
    grp = att.assign(success=att["success"].astype(bool)).groupby(["label", "target"])["success"]
    rate = grp.mean().unstack().reindex(index=labels, columns=labels)
    counts = grp.size().unstack().reindex(index=labels, columns=labels).fillna(0).astype(int)
    rate.index.name, rate.columns.name = "source", "target"
    rate.attrs["counts"] = counts
    return rate


def plot_success_matrix(records: pd.DataFrame, path: Union[str, Path], class_names: Optional[Sequence[str]] = None,
                        title: Optional[str] = None, num_classes: Optional[int] = None) -> Path:
    """Draw :func:`success_matrix` as a heat map with each cell's percentage (PNG at ``path``; the
    overall success rate over attacked rows in the title). Returns the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RobenchError("the success matrix needs matplotlib: pip install 'robench[plots]'") from None
    m = success_matrix(records, num_classes)
    k = len(m)
    names = [str(c) for c in (class_names or range(k))]
    if len(names) != k:
        raise RobenchError(f"class_names has {len(names)} names for {k} classes")
    att = records[records["attacked"].astype(bool)]
    overall = float(att["success"].astype(bool).mean())
    fig, ax = plt.subplots(figsize=(0.55 * k + 2.2, 0.55 * k + 1.6))
    im = ax.imshow(m.to_numpy(dtype=float) * 100, vmin=0, vmax=100, cmap="viridis")
    for i in range(k):
        for j in range(k):
            v = m.iat[i, j]
            if v == v:  # not NaN
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                        color="black" if v > 0.6 else "white")
    ax.set_xticks(range(k), names, fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("target")
    ax.set_ylabel("source")
    ax.set_title(title or f"targeted success (%), overall {100 * overall:.1f}% of {len(att)}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="success %")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
