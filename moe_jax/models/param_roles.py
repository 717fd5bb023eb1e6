"""What each parameter of the decoder is: its role and how its kernel splits into in x out.

The one table that quantisation (which leaves are quantised, along which axis), LoRA
(which kernels get adapters, how an adapter's A and B are shaped) and the Hugging Face
names (which tensors DeepSeek's FP8 checkpoints store in float8) derive from.

A parameter is named by its path of module names, e.g. ("moe_layers", "attn", "kv_b"),
("moe_layers", "moe", "shared", "up"), ("mtp_0", "layer", "moe", "router", "gate").
Its kernel layout depends only on the leaf name; its role on the path, because the
same leaf names serve several modules (`gate` is a dense MLP's, a shared expert's and
the router's). A scanned stack adds a leading "layers" axis and stacked experts an
"expert" axis; those leading axes index independent matrices and are not part of the
layout:

    W [*lead, *in_shape, *out_shape]     in_axes = len(in_shape), out_axes = len(out_shape)

Roles:
    attention       MLA's projections q / q_a / q_b / kv_a / kv_b / o
    dense_mlp       the dense layers' SwiGLU gate / up / down
    shared_expert   the shared experts' gate / up / down (one MLP of width n_shared * F)
    routed_expert   the stacked routed experts wi_gate / wi_up [E, D, F], wo [E, F, D]
    router          the gate [D, E] that scores experts (never quantised: a flipped top-k
                    costs more than the bytes it saves)
    mtp_projection  an MTP module's proj [2D, D]
    head            the output head [D, V]
    embedding       the token table [V, D] (a row lookup, not a matmul)
    norm            RMSNorm scales
"""

from __future__ import annotations

from typing import NamedTuple


class KernelLayout(NamedTuple):
    in_axes: int  # the contracted axes
    out_axes: int


# Leaf name -> layout, for every matmul kernel the modules create. MLA's q and kv_b
# split their output into heads [H, K]; its output projection o [H, V, D] contracts two.
KERNEL_LAYOUTS = {
    "q": KernelLayout(1, 2), "q_a": KernelLayout(1, 1), "q_b": KernelLayout(1, 2),
    "kv_a": KernelLayout(1, 1), "kv_b": KernelLayout(1, 2), "o": KernelLayout(2, 1),
    "gate": KernelLayout(1, 1), "up": KernelLayout(1, 1), "down": KernelLayout(1, 1),
    "wi_gate": KernelLayout(1, 1), "wi_up": KernelLayout(1, 1), "wo": KernelLayout(1, 1),
    "proj": KernelLayout(1, 1), "head": KernelLayout(1, 1),
}
ATTENTION_KERNELS = ("q", "q_a", "q_b", "kv_a", "kv_b", "o")
MLP_KERNELS = ("gate", "up", "down")
EXPERT_KERNELS = ("wi_gate", "wi_up", "wo")
# The projections inside decoder layers: what DeepSeek's FP8 checkpoints store in float8.
DECODER_PROJECTIONS = frozenset({"attention", "dense_mlp", "shared_expert", "routed_expert"})
ROLES = ("attention", "dense_mlp", "shared_expert", "routed_expert", "router", "mtp_projection",
         "head", "embedding", "norm")


def role(path) -> str | None:
    """The role of the parameter at `path` (a tuple of names), or None if it has none of
    the roles above (e.g. a variable of another collection)."""
    path = tuple(str(p) for p in path)
    name = path[-1]
    if "router" in path:
        return "router"
    if name == "scale":
        return "norm"
    if name == "embedding":
        return "embedding"
    if name == "head" and len(path) == 1:
        return "head"
    if name == "proj" and path[0].startswith("mtp_") and len(path) == 2:
        return "mtp_projection"
    if name in ATTENTION_KERNELS and "attn" in path:
        return "attention"
    if name in EXPERT_KERNELS and "moe" in path:
        return "routed_expert"
    if name in MLP_KERNELS:
        if "shared" in path:
            return "shared_expert"
        if "mlp" in path:
            return "dense_mlp"
    return None


def kernel_layout(path) -> KernelLayout | None:
    """The in x out split of a matmul kernel's trailing axes; None for a parameter that is
    not one (norms, the embedding table, the router's gate is one but is never adapted
    or quantised, so callers check the role first)."""
    return KERNEL_LAYOUTS.get(str(path[-1])) if role(path) not in (None, "norm", "embedding") else None


def input_axis(path, ndim: int) -> int | None:
    """The last contracted axis of a kernel, counted from the front of its ndim-D array,
    for the kernels (and the embedding, whose rows are looked up: its D axis) that
    weight quantisation groups along; None for the rest."""
    r = role(path)
    if r == "embedding":
        return ndim - 1
    layout = kernel_layout(path)
    if layout is None or r == "router" or ndim < layout.in_axes + layout.out_axes:
        return None
    return ndim - layout.out_axes - 1
