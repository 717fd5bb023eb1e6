import os

from moe_jax.train.figures import new_axes, save


def test_save_writes_a_png_and_leaves_pyplot_and_the_backend_alone(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    backend, figures = matplotlib.get_backend(), plt.get_fignums()
    fig, ax = new_axes()
    ax.plot([0, 1], [1, 0])
    path = save(fig, str(tmp_path / "curve.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 1000
    # A notebook's inline backend stays selected, and nothing piles up in pyplot's list.
    assert matplotlib.get_backend() == backend and plt.get_fignums() == figures
