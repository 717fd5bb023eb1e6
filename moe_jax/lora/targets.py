"""Which parameters get low-rank adapters, and how each kernel splits into in x out.

Targets are regular expressions matched (`re.fullmatch`) against a parameter's path
joined with "/", e.g. `moe_layers/attn/kv_b` or `moe_layers/moe/wi_gate`. A kernel's
last `in + out` axes are its matrix; any axes before them (the scanned "layers" axis,
the routed "expert" axis) index independent matrices, each with its own adapter:

    W [*lead, *in_shape, *out_shape]  ->  A [*lead, prod(in_shape), r]
                                          B [*lead, r, prod(out_shape)]

so the routed experts of a scanned stack get A [layers, E, D, r], B [layers, E, r, F].
The in/out split is a property of the module that owns the weight, listed by the
parameter's own name in KERNEL_LAYOUTS (MLA's `o` contracts heads and value dim).
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from flax import traverse_util

# Parameter name -> (number of input axes, number of output axes).
KERNEL_LAYOUTS = {
    "q": (1, 2), "q_a": (1, 1), "q_b": (1, 2), "kv_a": (1, 1), "kv_b": (1, 2), "o": (2, 1),
    "gate": (1, 1), "up": (1, 1), "down": (1, 1),
    "wi_gate": (1, 1), "wi_up": (1, 1), "wo": (1, 1),
    "head": (1, 1), "proj": (1, 1),
}

# Named target groups; a config lists group names or its own regular expressions.
TARGET_GROUPS = {
    "attention": r".*attn/(q|q_a|q_b|kv_a|kv_b|o)",
    "dense_mlp": r".*/mlp/(gate|up|down)",
    "shared_experts": r".*/moe/shared/(gate|up|down)",
    "routed_experts": r".*/moe/(wi_gate|wi_up|wo)",
}
DEFAULT_TARGETS = ("attention", "dense_mlp", "shared_experts", "routed_experts")


def target_patterns(targets: Iterable[str]) -> list[str]:
    """Group names expand to their regex; anything else is taken as a regex itself."""
    targets = list(targets)
    if not targets:
        raise ValueError("lora.targets is empty: expected group names from "
                         f"{sorted(TARGET_GROUPS)} or regular expressions over parameter paths")
    return [TARGET_GROUPS.get(t, t) for t in targets]


def path_name(path) -> str:
    return "/".join(str(p) for p in path)


def select_kernels(params: Mapping, targets: Iterable[str]) -> dict:
    """{path tuple: (in_axes, out_axes)} for every parameter a target matches.

    Raises ValueError when a target matches nothing (a typo would otherwise train no
    adapter at all) or matches a parameter whose layout is unknown.
    """
    patterns = target_patterns(targets)
    flat = traverse_util.flatten_dict(params)
    selected, used = {}, set()
    for path, leaf in flat.items():
        name = path_name(path)
        hits = [p for p in patterns if re.fullmatch(p, name)]
        if not hits:
            continue
        used.update(hits)
        if path[-1] not in KERNEL_LAYOUTS:
            raise ValueError(f"lora target {hits[0]!r} matches {name!r}, whose in/out layout is "
                             f"unknown; expected one of {sorted(KERNEL_LAYOUTS)}")
        in_axes, out_axes = KERNEL_LAYOUTS[path[-1]]
        if len(leaf.shape) < in_axes + out_axes:
            raise ValueError(f"parameter {name!r} of shape {tuple(leaf.shape)} has fewer than "
                             f"{in_axes + out_axes} axes")
        selected[path] = (in_axes, out_axes)
    unused = [p for p in patterns if p not in used]
    if unused:
        raise ValueError(f"lora.targets {unused} match no parameter; paths look like "
                         f"{path_name(next(iter(flat)))!r}")
    return selected


def adapter_shapes(shape, in_axes: int, out_axes: int, rank: int):
    """(A shape, B shape) for a kernel of `shape` split as in_axes x out_axes."""
    lead = tuple(shape[: len(shape) - in_axes - out_axes])
    fan_in = 1
    for n in shape[len(lead): len(lead) + in_axes]:
        fan_in *= n
    fan_out = 1
    for n in shape[len(lead) + in_axes:]:
        fan_out *= n
    return lead + (fan_in, rank), lead + (rank, fan_out)
