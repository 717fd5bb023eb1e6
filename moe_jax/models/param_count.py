"""Total and activated parameter counts, from abstract shapes (no weights allocated).

Convention (the one DeepSeek's weight documentation uses: V3 "36.6B activated,
including 0.9B for the output head"): a parameter is *activated* when a token's forward
pass multiplies by it. Routed experts count K/E of their size, the input embedding
counts zero (a row lookup, no multiply), everything else counts fully. MTP modules are
reported on their own, since inference usually drops them.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from moe_jax.models.transformer import Transformer

ROUTED = "routed_experts"


def _component(path: tuple[str, ...]) -> str:
    """Name the part of the model a parameter path belongs to."""
    name = "/".join(path)
    if path[0] == "embed":
        return "embedding"
    if path[0] == "head":
        return "head"
    if any(p in ("wi_gate", "wi_up", "wo") for p in path):
        return ROUTED
    if "shared" in path:
        return "shared_experts"
    if "router" in path:
        return "router"
    if "attn" in path and "norm" not in path[-2]:
        return "attention"
    if "mlp" in path:
        return "dense_mlp"
    if path[-1] == "proj":
        return "mtp_projection"
    if "norm" in name:
        return "norms"
    return "other"


def abstract_params(model_config):
    """Parameter shapes via jax.eval_shape: no memory is allocated."""
    model = Transformer.from_config(model_config)
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)
    return nn.unbox(variables)["params"]


def count_parameters(model_config) -> dict:
    """{"total", "activated", "main": {component: (total, activated)}, "mtp": {...}}."""
    m = model_config
    routed_fraction = m.top_k / m.num_experts
    main, mtp = {}, {}
    for path, leaf in traverse_util.flatten_dict(abstract_params(m)).items():
        size = math.prod(leaf.shape)
        component = _component(path)
        if component == "embedding":
            active = 0
        elif component == ROUTED:
            active = size * routed_fraction
        else:
            active = size
        table = mtp if path[0].startswith("mtp_") else main
        total_so_far, active_so_far = table.get(component, (0, 0))
        table[component] = (total_so_far + size, active_so_far + active)

    def summed(table, index):
        return int(round(sum(v[index] for v in table.values())))

    return {
        "total": summed(main, 0),
        "activated": summed(main, 1),
        "mtp_total": summed(mtp, 0),
        # The MTP head and embedding are shared with the main model; only its own
        # layers are new, but a token through MTP multiplies by the head again.
        "mtp_activated": summed(mtp, 1) + (main.get("head", (0, 0))[0] if mtp else 0),
        "main": {k: {"total": int(v[0]), "activated": int(round(v[1]))} for k, v in sorted(main.items())},
        "mtp": {k: {"total": int(v[0]), "activated": int(round(v[1]))} for k, v in sorted(mtp.items())},
    }


def format_count(n: int) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
