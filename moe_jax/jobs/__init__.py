"""The named runs, and how `python -m moe_jax.main` picks the one to run.

    pretrain    train a model from scratch on a task's worked solutions (the README's job)
    sft         the same trainer, named for supervised fine-tuning recipes
    grpo        GRPO with verifiable rewards from an SFT model (trained first if needed)
    grm_spct    the generative reward model pipeline (cold start, RFT, meta RM, RL, eval)
    distill     a teacher MoE distilled into a smaller student, against the student alone
    lora        LoRA vs full fine-tuning on a task shift

An experiment file picks a job by name (`config.job`; default "pretrain") and may supply
its own pieces, which the job then uses:

    run(config, workdir, log) -> Summary      the whole run, instead of any job
    make_train_step(model, optimizer, config)  pretrain/sft: the step to jit
    reward(config, tokenizer) -> reward_fn     grpo: rewards of sampled responses

`run_experiment(module, config, workdir)` applies that rule; no config field names a
module, and an experiment file imports the package, never another experiment file.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from typing import Callable

from moe_jax.jobs.summary import Summary
from moe_jax.models.config import ConfigError

DEFAULT_JOB = "pretrain"


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    run: Callable  # (config, workdir, *, experiment, log) -> Summary
    validate: Callable  # (config) -> None, raises ConfigError; no device work


def _registry() -> dict[str, Job]:
    # Imported on first use: `moe_jax.jobs` is cheap to import for a reader of this table.
    from moe_jax.jobs import distill, grm_spct, grpo, lora, pretrain

    return {
        "pretrain": Job("pretrain", pretrain.run, pretrain.validate),
        "sft": Job("sft", pretrain.run, pretrain.validate),
        "grpo": Job("grpo", grpo.run, grpo.validate),
        "grm_spct": Job("grm_spct", grm_spct.run, grm_spct.validate),
        "distill": Job("distill", distill.run, distill.validate),
        "lora": Job("lora", lora.run, lora.validate),
    }


def get_job(name: str) -> Job:
    jobs = _registry()
    if name not in jobs:
        raise ConfigError("job", name, f"one of {sorted(jobs)}")
    return jobs[name]


def job_of(config) -> Job:
    return get_job(config.get("job", DEFAULT_JOB))


def validate_experiment(module, config) -> None:
    """Check the config before any device work: the experiment's own validate(config)
    when it defines one, else the job's."""
    if module is not None and hasattr(module, "validate"):
        module.validate(config)
    elif module is None or not hasattr(module, "run"):
        job_of(config).validate(config)


def run_experiment(module, config, workdir: str, log=print, started: float | None = None) -> Summary:
    """Run the experiment file `module` (None for a preset) with `config`: its own run()
    if it has one, else the job config.job names, given the module for its hooks. The
    Summary is recorded in <workdir>/summary.json, which is what marks a run finished
    (moe_jax.sweeps), with the process's wall time since `started` (time.time(); default
    now) and its CPU time."""
    started = time.time() if started is None else started
    if module is not None and hasattr(module, "run"):
        summary = module.run(config, workdir, log=log)
        if not isinstance(summary, Summary):
            raise TypeError(f"{module.__name__}.run returned {type(summary).__name__}; expected a "
                            f"moe_jax.jobs.Summary")
    else:
        summary = job_of(config).run(config, workdir, experiment=module, log=log)
    summary.wall_seconds = round(time.time() - started, 1)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    summary.cpu_seconds = round(usage.ru_utime + usage.ru_stime, 1)
    if _is_primary():
        os.makedirs(workdir, exist_ok=True)
        summary.write(workdir)
    return summary


def _is_primary() -> bool:
    import jax

    return jax.process_index() == 0
