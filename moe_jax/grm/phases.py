"""Which settings each saved phase of the GRM pipeline was built with, and the check
that a rerun may reuse it.

A phase (models/<phase>) is reused by a rerun of the pipeline, which then continues
after it. That is right only if the rerun's config would have built the same phase. Each
phase records the settings it depends on (settings.json beside its weights); a rerun
first compares every saved phase's with its own and stops before anything runs, naming
each differing field and both values, when one differs (a change to an earlier phase's
settings changes every later phase built on it, so they are compared too).

What a phase depends on is all of the config except: what only evaluation reads
(EVALUATION_ONLY), the resume-safe fields of moe_jax.train.run_config, and the settings
of phases that come after it (LATER).
"""

from __future__ import annotations

import json
import os

from moe_jax.train.run_config import ConfigMismatchError, differences, flatten, is_safe

PHASES = ("policy", "cold_start", "rft", "meta_rm", "rl")
SETTINGS_FILE = "settings.json"
EVALUATION_ONLY = ("grm.test_sets", "grm.eval_ks", "grm.best_of_n", "grm.best_of_n_problems",
                   "grm.best_of_n_grm_samples", "grm.best_of_n_pairing", "grm.figure",
                   "grm.meta_drop_uniform", "grm.parser", "job")
_RFT = ("grm.rft_",)
_META = ("grm.meta_",)
_RL = ("grm.rl_",)
LATER = {
    # The policy reads only its own fields and the shared model, data and optimizer ones.
    "policy": ("grm.cold_start_steps", "grm.init_from", "grm.init_from_policy", "grm.train_sets",
               "grm.no_best_", "grm.critique", "grm.response_view", "grm.hint_fraction",
               "grm.num_responses", "grm.generate_batch_size", "grm.eval_temperature", "grm.prompt_len",
               "grm.max_new_tokens", "grm.seq_len") + _RFT + _META + _RL,
    "cold_start": _RFT + _META + _RL + ("grm.eval_temperature",),
    # RFT's samples also label the meta RM's default data (grm.meta_decisive).
    "rft": ("grm.meta_sets", "grm.meta_samples", "grm.meta_steps", "grm.eval_temperature") + _RL,
    "meta_rm": _RL,
    "rl": _META + ("grm.eval_temperature",),
}


def _excluded(name: str, phase: str) -> bool:
    prefixes = EVALUATION_ONLY + LATER[phase]
    return is_safe(name) or any(name == p or name.startswith(p) for p in prefixes)


def settings(config, phase: str) -> dict:
    """The flattened config fields phase `phase` depends on."""
    return {k: v for k, v in flatten(config).items() if not _excluded(k, phase)}


def record(directory: str, config, phase: str) -> None:
    with open(os.path.join(directory, SETTINGS_FILE), "w") as f:
        json.dump(settings(config, phase), f, indent=1, sort_keys=True)


def check_saved_phases(config, workdir: str) -> None:
    """Raise ConfigMismatchError when a saved phase was built with other settings."""
    for phase in PHASES:
        path = os.path.join(workdir, "models", phase, SETTINGS_FILE)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            saved = json.load(f)
        unsafe, _ = differences(saved, settings(config, phase))
        if unsafe:
            raise ConfigMismatchError(os.path.join(workdir, "models", phase), unsafe)
