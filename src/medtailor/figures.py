"""One way to draw and write a figure, shared by every stage that plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend: Slurm nodes and CI have no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Lay out ``fig``, write it to ``path`` (creating the folder) and free it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def log_parameter_axis(ax: Any, values: Any) -> None:
    """A log x axis for model sizes (millions of parameters) labelled at a few round values
    (1, 2, 5 x 10^k) inside the data's range, with unlabelled minor ticks: over a narrow
    range matplotlib's default labels every minor tick and the labels overlap."""
    import numpy as np
    from matplotlib.ticker import FixedLocator, NullFormatter

    ax.set_xscale("log")
    finite = np.asarray(values, float)
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if not len(finite):
        return
    low, high = finite.min() / 1.3, finite.max() * 1.3
    ax.set_xlim(low, high)
    decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    ticks = [m * 10.0**k for k in decades for m in (1, 2, 5) if low <= m * 10.0**k <= high]
    if len(ticks) < 2:  # a range inside one 1-2-5 step: its ends, rounded
        ticks = sorted({float(f"{low * 1.1:.2g}"), float(f"{high / 1.1:.2g}")})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
