"""DeepSeek-V3 (671B total, 37B activated per token), the published shapes.

The preset `deepseek_v3` of moe_jax.models.presets (also loadable by name: `--config deepseek_v3`).
"""

from moe_jax.models.presets import deepseek_v3


def get_config(arg=None):
    del arg
    return deepseek_v3()
