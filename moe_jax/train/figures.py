"""Writing PNG figures from scripts, servers and CI, where there is no display.

    fig, ax = new_axes()
    ax.plot(...)
    save(fig, "curve.png")

matplotlib is imported on first use, so modules that only might plot do not pay for it.
"""

from __future__ import annotations


def new_axes(figsize=(6, 4), nrows: int = 1, ncols: int = 1):
    """-> (figure, axes) on the non-interactive Agg backend (an array of axes for a grid)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=figsize)


def save(fig, path: str, dpi: int = 120) -> str:
    """Write `fig` to `path` and release it (figures left open pile up in sweeps)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
