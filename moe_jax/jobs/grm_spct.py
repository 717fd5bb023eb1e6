"""The `grm_spct` job: the generative reward model pipeline of moe_jax.grm.pipeline.

Its headline is MetaRM@8 (meta-RM-guided voting over 8 sampled critiques) after RFT + RL:
the fraction of held-out preference sets whose best response the GRM picks.
"""

from __future__ import annotations

from moe_jax.grm.pipeline import format_table, train_and_evaluate_grm, validate_grm_config
from moe_jax.jobs.pretrain import validate as validate_training
from moe_jax.jobs.summary import Summary


def validate(config) -> None:
    validate_training(config)
    validate_grm_config(config)


def run(config, workdir: str, *, experiment=None, log=print) -> Summary:
    del experiment  # the pipeline's phases are fixed; its settings live in config.grm
    result = train_and_evaluate_grm(config, workdir, log=log)
    log(format_table(result["results"], config.grm.eval_ks))
    return Summary(job="grm_spct", metric=f"held-out best-response accuracy (MetaRM@{result['headline_k']})",
                   value=result["exact_match"], steps=result["step"],
                   seconds=result["train_seconds"], examples=result["eval_examples"],
                   unit="preference sets", details=result)
