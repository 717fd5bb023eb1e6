import os

import jax.numpy as jnp
import numpy as np

from moe_jax.train.checkpoint import Checkpointer, CorruptCheckpointError


def state_at(step):
    return {"w": jnp.full((4, 4), float(step)), "step": jnp.array(step)}


def test_corrupt_newest_checkpoint_is_quarantined_and_older_one_restored(tmp_path):
    messages = []
    ckpt = Checkpointer(str(tmp_path), keep=3, async_save=True, log=messages.append)
    for step in (1, 2, 3):
        ckpt.save(step, state_at(step), {"pos": step}, {"seed": 0})
    ckpt.close()
    newest = tmp_path / "checkpoints" / "3"
    files = [os.path.join(r, f) for r, _, fs in os.walk(newest) for f in fs]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:  # flip bytes in the middle: same size, wrong content
        f.seek(os.path.getsize(biggest) // 2)
        f.write(b"\x00garbage\x00")

    ckpt = Checkpointer(str(tmp_path), keep=3, log=messages.append)
    state, data, extra = ckpt.restore_latest(state_at(0))
    np.testing.assert_array_equal(state["w"], np.full((4, 4), 2.0))
    assert data == {"pos": 2} and extra == {"seed": 0}
    assert any("step 3 is corrupt" in m for m in messages)
    assert not newest.exists() and os.listdir(tmp_path / "corrupt")
    # A new save at step 3 goes into a fresh directory; step 2 is left as it was.
    ckpt.save(3, state_at(3), {"pos": 3})
    ckpt.close()
    restored, data, _ = Checkpointer(str(tmp_path)).restore_latest(state_at(0))
    assert data == {"pos": 3}


def test_no_checkpoint_restores_none(tmp_path):
    assert Checkpointer(str(tmp_path)).restore_latest(state_at(0)) is None


def test_a_reader_with_the_wrong_shapes_gets_an_error_and_moves_nothing(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=3, async_save=False, log=lambda *_: None)
    ckpt.save(5, state_at(5), {"pos": 5})
    ckpt.close()
    wrong = {"w": jnp.zeros((8, 8)), "step": jnp.array(0)}
    reader = Checkpointer(str(tmp_path), log=lambda *_: None)
    try:
        reader.restore_latest(wrong, quarantine=False)
    except CorruptCheckpointError as error:
        assert "step 5" in str(error)
    else:
        raise AssertionError("a mismatched template must not read back")
    assert (tmp_path / "checkpoints" / "5").exists() and not (tmp_path / "corrupt").exists()
    state, data, _ = reader.restore_latest(state_at(0), quarantine=False)
    np.testing.assert_array_equal(state["w"], np.full((4, 4), 5.0))
