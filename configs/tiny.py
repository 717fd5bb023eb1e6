"""A few-million-parameter DeepSeek-V3-shaped model that trains on a laptop CPU.

The preset `tiny` of moe_jax.models.presets (also loadable by name: `--config tiny`).
"""

from moe_jax.models.presets import tiny


def get_config(arg=None):
    del arg
    return tiny()
