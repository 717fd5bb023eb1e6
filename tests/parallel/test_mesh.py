import jax
import pytest

from moe_jax.models.config import ConfigError
from moe_jax.parallel import mesh as pm


def test_minus_one_takes_the_rest():
    assert pm.resolve_mesh_shape({"data": 2, "fsdp": -1, "expert": 2}, 8) == \
        {"data": 2, "fsdp": 2, "expert": 2, "tensor": 1}
    assert pm.resolve_mesh_shape(pm.parse_mesh_spec("data=1,fsdp=32,expert=8,tensor=1"), 256) == \
        {"data": 1, "fsdp": 32, "expert": 8, "tensor": 1}


@pytest.mark.parametrize("sizes, devices, field", [
    ({"data": 2, "expert": 2}, 8, "mesh"),  # 4 != 8
    ({"data": 3, "fsdp": -1}, 8, "mesh.fsdp"),  # 3 does not divide 8
    ({"data": -1, "fsdp": -1}, 8, "mesh.fsdp"),  # two -1
    ({"expert": 0}, 8, "mesh.expert"),
    ({"pipeline": 2}, 8, "mesh.pipeline"),
])
def test_bad_sizes_name_the_field(sizes, devices, field):
    with pytest.raises(ConfigError) as err:
        pm.resolve_mesh_shape(sizes, devices)
    assert err.value.field == field
    assert f"`{field}`" in str(err.value)


def test_bad_spec_names_the_field():
    with pytest.raises(ConfigError, match="mesh.expert"):
        pm.parse_mesh_spec("expert=two")


def test_make_mesh_from_config_section_on_8_devices():
    mesh = pm.make_mesh({"data": 2, "fsdp": 1, "expert": -1, "tensor": 1})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "expert": 4, "tensor": 1}
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 4
    # The default section puts every device on fsdp.
    assert dict(pm.make_mesh(pm.mesh_config_of(None)).shape)["fsdp"] == len(jax.devices())


def test_abstract_mesh_needs_no_devices():
    mesh = pm.abstract_mesh({"fsdp": 32, "expert": 8})
    assert dict(zip(mesh.axis_names, mesh.axis_sizes)) == {"data": 1, "fsdp": 32, "expert": 8, "tensor": 1}
