"""Which parameters get low-rank adapters, and how each kernel splits into in x out.

A target is a group name (a parameter role of moe_jax.models.param_roles: `attention`,
`dense_mlp`, `shared_experts`, `routed_experts`) or a regular expression matched
(`re.fullmatch`) against a parameter's path joined with "/", e.g.
`moe_layers/attn/kv_b` or `moe_layers/moe/wi_gate`. A kernel's last `in + out` axes are
its matrix (param_roles.KERNEL_LAYOUTS); any axes before them (the scanned "layers"
axis, the routed "expert" axis) index independent matrices, each with its own adapter:

    W [*lead, *in_shape, *out_shape]  ->  A [*lead, prod(in_shape), r]
                                          B [*lead, r, prod(out_shape)]

so the routed experts of a scanned stack get A [layers, E, D, r], B [layers, E, r, F].
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from flax import traverse_util

from moe_jax.models.param_roles import KERNEL_LAYOUTS, kernel_layout, role

# Target group name -> the parameter role it selects.
TARGET_GROUPS = {
    "attention": "attention",
    "dense_mlp": "dense_mlp",
    "shared_experts": "shared_expert",
    "routed_experts": "routed_expert",
}
DEFAULT_TARGETS = ("attention", "dense_mlp", "shared_experts", "routed_experts")


def _matcher(target: str):
    """target -> predicate(path, name)."""
    if target in TARGET_GROUPS:
        wanted = TARGET_GROUPS[target]
        return lambda path, name: role(path) == wanted
    return lambda path, name: re.fullmatch(target, name) is not None


def path_name(path) -> str:
    return "/".join(str(p) for p in path)


def select_kernels(params: Mapping, targets: Iterable[str]) -> dict:
    """{path tuple: (in_axes, out_axes)} for every parameter a target matches.

    Raises ValueError when a target matches nothing (a typo would otherwise train no
    adapter at all) or matches a parameter that is not a matmul kernel.
    """
    targets = list(targets)
    if not targets:
        raise ValueError("lora.targets is empty: expected group names from "
                         f"{sorted(TARGET_GROUPS)} or regular expressions over parameter paths")
    matchers = [(t, _matcher(t)) for t in targets]
    flat = traverse_util.flatten_dict(params)
    selected, used = {}, set()
    for path, leaf in flat.items():
        name = path_name(path)
        hits = [t for t, match in matchers if match(path, name)]
        if not hits:
            continue
        used.update(hits)
        layout = kernel_layout(path)
        if layout is None:
            raise ValueError(f"lora target {hits[0]!r} matches {name!r}, whose in/out layout is "
                             f"unknown; expected a kernel named one of {sorted(KERNEL_LAYOUTS)}")
        if len(leaf.shape) < layout.in_axes + layout.out_axes:
            raise ValueError(f"parameter {name!r} of shape {tuple(leaf.shape)} has fewer than "
                             f"{layout.in_axes + layout.out_axes} axes")
        selected[path] = tuple(layout)
    unused = [t for t in targets if t not in used]
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
