"""The one figure writer every stage uses."""

from __future__ import annotations

from pathlib import Path

from medtailor.figures import pyplot, save_figure


def test_save_figure_writes_a_png_into_a_new_folder_and_frees_the_figure(tmp_path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "nested" / "figures" / "line.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.number not in plt.get_fignums()
