"""DeepSeek-V2-Lite (15.7B total, 2.4B activated per token), the published shapes.

The preset `deepseek_v2_lite` of moe_jax.models.presets (also loadable by name: `--config deepseek_v2_lite`).
"""

from moe_jax.models.presets import deepseek_v2_lite


def get_config(arg=None):
    del arg
    return deepseek_v2_lite()
