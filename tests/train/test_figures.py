import os

from moe_jax.train.figures import new_axes, save


def test_save_writes_a_png_and_closes_the_figure(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = new_axes()
    ax.plot([0, 1], [1, 0])
    path = save(fig, str(tmp_path / "curve.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 1000
    assert not plt.fignum_exists(fig.number)
