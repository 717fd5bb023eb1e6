"""Writing PNG figures from scripts, servers, CI and notebooks alike.

    fig, ax = new_axes()
    ax.plot(...)
    save(fig, "curve.png")

Figures are matplotlib `Figure` objects made directly, never through pyplot: no backend
is chosen or switched and no global figure list grows, so a script without a display
works, and a notebook keeps its inline backend (`display(fig)` shows one there).
matplotlib is imported on first use, so modules that only might plot do not pay for it.
"""

from __future__ import annotations


def new_figure(figsize=(6, 4)):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def new_axes(figsize=(6, 4)):
    """-> (figure, axes)."""
    fig = new_figure(figsize)
    return fig, fig.add_subplot()


def save(fig, path: str, dpi: int = 120, tight: bool = True) -> str:
    """Write `fig` to `path` (PNG by its extension)."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path
