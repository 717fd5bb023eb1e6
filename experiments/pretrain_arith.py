"""Pretraining a DeepSeek-style MoE on multi-step integer arithmetic with worked solutions.

The model reads `64-973-75=` and writes `+4600-3790=-9090-5700=-4890>-984`: running
totals with digits least significant first (the order in which carries propagate), then
the answer. Held-out problems share none of the training problems; accuracy is exact
match of the final answer, checked by the task's verifier.

    python -m moe_jax.main --config=experiments/pretrain_arith.py:tiny --workdir=/tmp/arith

Variants: `tiny` (2 CPU cores, a few minutes), `small` and `base` (one accelerator).
`sweep()` lists an ablation: router type x number of experts.
"""

from moe_jax.jobs import recipes

VARIANTS = recipes.ARITHMETIC_VARIANTS


def get_config(arg=None):
    """The recipe lives in moe_jax.jobs.recipes.arithmetic, which the experiments that
    start from this model (SFT, GRPO, the GRM, LoRA, distillation) build on too."""
    return recipes.arithmetic(arg or "tiny")


def sweep():
    """Router type x number of experts, as overrides of the `tiny` variant."""
    return [{"config.model.router": router, "config.model.num_experts": experts,
             "config.model.top_k": 2}
            for router in ("softmax", "sigmoid_bias") for experts in (4, 8, 16)]
