"""What every report shares: a markdown table, and a matplotlib figure made and written to a file.

The sweep comparison (:mod:`vdmlab.analysis.compare` and its reports), the search report, the benchmarks and the
notebooks build their tables and figures with these two helpers. Figures use matplotlib's object-oriented API
(``Figure``, no ``pyplot``): no backend is selected or touched, so they draw the same headless (a server, CI) and
in a notebook (where ``display(fig)`` shows them inline), and nothing needs closing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table: the header, the separator and one line per row (cells written with ``str``), no final newline."""
    lines = [_line(header), "|" + "|".join("---" for _ in header) + "|"]
    lines += [_line(row) for row in rows]
    return "\n".join(lines)


def _line(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] = (6, 4.5), dpi: int = 100,
           **subplots: Any) -> tuple[Figure, Any]:
    """A new figure and its axes (one ``Axes``, or an array of them as ``Figure.subplots`` returns for a grid)."""
    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots(nrows, ncols, **subplots)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Lay ``fig`` out tightly and write it to ``path`` (the format from its suffix), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path
