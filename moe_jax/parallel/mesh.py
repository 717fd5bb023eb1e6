"""The device mesh: four named axes, sized from the `mesh` config section.

Axes, in mesh order (the last ones vary fastest over devices, so they should be the ones
with the most traffic: tensor, then expert):

    data    pure data parallelism: parameters replicated, batch split
    fsdp    batch split AND parameters split on their "embed" dimension (gathered at use)
    expert  batch split AND routed experts split on their expert dimension
    tensor  parameters split on their inner (mlp, heads, vocab, expert_mlp) dimension

`config.mesh` holds one int per axis; -1 means "whatever is left of the device count"
(at most one axis may say so). `resolve_mesh_shape` checks that the product equals the
number of devices and names the offending field otherwise. Fixed sizes whose product is
smaller than the device count use that many devices, the first ones (`data=1, fsdp=1,
expert=1, tensor=1` is a one-device run on any host; the mesh is always logged).
"""

from __future__ import annotations

import math
from typing import Mapping

import ml_collections

from moe_jax.models.config import ConfigError

MESH_AXES = ("data", "fsdp", "expert", "tensor")


def default_mesh_config() -> ml_collections.ConfigDict:
    """Everything on fsdp: the layout that needs no thought about the model's shapes."""
    return ml_collections.ConfigDict({"data": 1, "fsdp": -1, "expert": 1, "tensor": 1})


def mesh_config_of(config) -> ml_collections.ConfigDict:
    """`config.mesh` when the config has one, else the default (all devices on fsdp)."""
    if config is not None and "mesh" in config:
        return config.mesh
    return default_mesh_config()


def parse_mesh_spec(spec: str) -> dict[str, int]:
    """"data=1,fsdp=32,expert=8,tensor=1" -> {"data": 1, ...}. Missing axes are 1."""
    sizes = {axis: 1 for axis in MESH_AXES}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in MESH_AXES:
            raise ConfigError(f"mesh.{name}" if sep else "mesh", part,
                              f"AXIS=SIZE with AXIS one of {list(MESH_AXES)}")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ConfigError(f"mesh.{name}", value, "an integer (-1 for the rest)") from None
    return sizes


def resolve_mesh_shape(sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Replace the -1 (if any) and check that the sizes multiply to `num_devices`.

    sizes: {axis: int} over a subset of MESH_AXES (missing axes are 1) -> {axis: int}
    over all of MESH_AXES, in mesh order. Raises ConfigError naming the field.
    """
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ConfigError(f"mesh.{unknown[0]}", sizes[unknown[0]], f"an axis among {list(MESH_AXES)}")
    shape = {axis: sizes.get(axis, 1) for axis in MESH_AXES}
    for axis, size in shape.items():
        if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
            raise ConfigError(f"mesh.{axis}", size, "a positive integer, or -1 for the rest")
    rest = [axis for axis, size in shape.items() if size == -1]
    if len(rest) > 1:
        raise ConfigError(f"mesh.{rest[1]}", -1, f"a fixed size: only one axis may be -1 ({rest[0]} is)")
    known = math.prod(size for size in shape.values() if size != -1)
    if rest:
        if num_devices % known:
            raise ConfigError(f"mesh.{rest[0]}", -1,
                              f"a size that fills {num_devices} devices, but the other axes "
                              f"multiply to {known}, which does not divide {num_devices}")
        shape[rest[0]] = num_devices // known
    elif known != num_devices:
        product = " * ".join(f"{axis}={size}" for axis, size in shape.items())
        raise ConfigError("mesh", dict(shape),
                          f"sizes whose product equals the {num_devices} devices, got "
                          f"{product} = {known}; set one axis to -1 to take the rest")
    return shape


def _axis_types(count: int):
    import jax

    # Auto: the compiler propagates shardings (GSPMD); only expert_parallel's shard_map
    # goes manual. Explicit axes would demand a sharding rule for every op in the model.
    return (jax.sharding.AxisType.Auto,) * count


def make_mesh(sizes: Mapping[str, int] | None = None, devices=None):
    """A `jax.sharding.Mesh` over `devices` (default: all global devices) with MESH_AXES.

    sizes: the `mesh` config section or a dict; None means the default (all on fsdp).
    """
    import jax

    devices = list(jax.devices() if devices is None else devices)
    sizes = dict(sizes if sizes is not None else default_mesh_config())
    fixed = list(sizes.values())
    if -1 not in fixed and all(isinstance(v, int) and v > 0 for v in fixed):
        wanted = math.prod(fixed)
        if wanted < len(devices) and jax.process_count() == 1:
            devices = devices[:wanted]  # an explicit smaller mesh: the first devices
    shape = resolve_mesh_shape(sizes, len(devices))
    return jax.make_mesh(tuple(shape.values()), MESH_AXES, axis_types=_axis_types(len(MESH_AXES)),
                         devices=devices)


def abstract_mesh(sizes: Mapping[str, int], num_devices: int | None = None):
    """A `jax.sharding.AbstractMesh` (no devices needed, e.g. 256 for a memory plan).

    num_devices: resolves a -1; defaults to the product of the given sizes."""
    import jax

    if num_devices is None:
        if any(v == -1 for v in sizes.values()):
            raise ConfigError("mesh", dict(sizes), "fixed sizes, or a device count to resolve -1")
        num_devices = math.prod(sizes.values())
    shape = resolve_mesh_shape(dict(sizes), num_devices)
    return jax.sharding.AbstractMesh(tuple(shape.values()), MESH_AXES,
                                     axis_types=_axis_types(len(MESH_AXES)))
