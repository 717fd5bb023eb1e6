"""The parameter roles table against the parameters the model really creates."""

import math

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from helpers import tiny_model_config
from moe_jax.models.param_roles import ROLES, input_axis, kernel_layout, role
from moe_jax.models.transformer import Transformer


@pytest.mark.parametrize("scan", [True, False])
def test_every_parameter_has_a_role_and_its_layout_fits_its_shape(scan):
    m = tiny_model_config(mtp_depth=1, q_lora_rank=16, scan_layers=scan)
    model = Transformer.from_config(m)
    params = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, 8), np.int32)))["params"]
    seen = set()
    for path, leaf in traverse_util.flatten_dict(params).items():
        r = role(path)
        assert r in ROLES, path
        seen.add(r)
        layout = kernel_layout(path)
        if r in ("norm", "embedding"):
            assert layout is None
            continue
        # The kernel's trailing in + out axes are its matrix; the rest index copies of it
        # (the scanned layer axis, the expert axis).
        lead = leaf.ndim - layout.in_axes - layout.out_axes
        assert lead >= 0, path
        assert lead == (1 if scan and path[0].endswith("layers") else 0) + (r == "routed_expert"), path
    assert seen == set(ROLES)


def test_hand_checked_roles_and_input_axes():
    # o [layers, H, V, D] contracts (H, V): its last input axis is V, axis 2 of 4.
    assert role(("moe_layers", "attn", "o")) == "attention"
    assert input_axis(("moe_layers", "attn", "o"), 4) == 2
    # q_b [Q, H, K]: one input axis, two output axes -> axis 0.
    assert input_axis(("dense_layers_0", "attn", "q_b"), 3) == 0
    # The same leaf name in three modules.
    assert role(("dense_layers", "mlp", "gate")) == "dense_mlp"
    assert role(("moe_layers", "moe", "shared", "gate")) == "shared_expert"
    assert role(("moe_layers", "moe", "router", "gate")) == "router"
    assert input_axis(("moe_layers", "moe", "router", "gate"), 3) is None  # never quantised
    # Routed experts [layers, E, D, F]: grouped along D.
    assert role(("moe_layers", "moe", "wi_up")) == "routed_expert"
    assert input_axis(("moe_layers", "moe", "wi_up"), 4) == 2
    # The embedding [V, D] is looked up by row: grouped along D.
    assert input_axis(("embed", "embedding"), 2) == 1
    assert role(("mtp_0", "proj")) == "mtp_projection"
    assert role(("head",)) == "head" and math.prod(kernel_layout(("head",))) == 1
