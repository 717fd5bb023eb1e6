"""A statistical watermark in generated text: how often it is found, and what it costs.

The model: the main job's tiny MoE (moe_jax.jobs.recipes.arithmetic) trained as a
character-level language model on the docstrings of the Python standard library that
runs it (the `docstrings` task: 126-character windows, a 16-character prompt, nothing
downloaded). Why this and not arithmetic: a watermark can only tilt choices the model
leaves open. An arithmetic solution is nearly determined by its prompt (a trained model
puts almost all its probability on one digit), so the green-list bias has nothing to
tilt and would either vanish or break the answer; English prose has a couple of nats of
entropy per character even for a good model, and a small one leaves more.

The watermark (moe_jax.infer.watermark, Kirchenbauer et al. 2023): a keyed hash of the
previous `watermark.context` characters marks a `gamma` share of the vocabulary green,
and green logits get +delta. For each delta the model writes continuations of held-out
prompts at temperature 1; the detector (which knows the key, not the model) counts green
characters, each (context, character) pair once, and flags a text when its z-score has a
one-sided p-value below 1e-3. Unwatermarked texts from the same model and prompts give
the false alarms; the quality cost is the held-out perplexity under the biased
distribution and the samples' perplexity under the unbiased model
(moe_jax.analysis.watermark_eval).

    python -m moe_jax.main --config=experiments/watermark.py:tiny --workdir=runs/watermark

Rerunning reuses the trained model (the pretrain job resumes, finished) and redoes the
study. Variants: `tiny` (2 CPU cores), `runlocal` (seconds: a smoke run of the plumbing).
Results: experiments/RESULTS.md.
"""

import ml_collections

from moe_jax.analysis.watermark_eval import watermark_study
from moe_jax.data.splits import load_data
from moe_jax.data.tokenizer import get_tokenizer
from moe_jax.infer.watermark import watermark_config
from moe_jax.jobs import Summary, get_job, recipes
from moe_jax.train.loader import load_model

VARIANTS = ("tiny", "runlocal")


def get_config(arg=None):
    variant = arg or "tiny"
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: expected one of {VARIANTS}")
    c = recipes.arithmetic("tiny")
    recipes.earlier_tiny(c)  # the model and schedule the recorded figures were measured with
    c.data.task = "docstrings"
    c.data.difficulty = ml_collections.ConfigDict()  # the task's: 126-char windows, 16-char prompts
    c.data.num_train, c.data.num_test = 8_000, 800
    c.data.seq_len = 128  # <bos> + 126 characters + <eos>
    c.data.packing = "pad"  # every window fills its row
    c.train.steps, c.train.batch_size = 1_500, 16
    c.train.checkpoint_every = 500
    c.optimizer.warmup_steps = 100
    c.eval.every = 0
    c.eval.final_num_examples, c.eval.max_new_tokens = 50, 110  # exact recall: ~0 by design
    c.eval.show = 2

    # The study (under eval: a rerun may change it and keep the trained model). Its key,
    # gamma and context are a `watermark` section's; `enabled` stays off because training
    # samples nothing, and the study switches the watermark on for each delta.
    s = c.eval.watermark = watermark_config()
    s.key = 20_230_124  # the detector's secret
    s.gamma = 0.25
    s.context = 2
    s.deltas = (1.0, 2.0)
    s.texts = 500  # per delta
    s.null_texts = 1_000  # without a watermark: the false-alarm rate
    s.length = 100  # new characters per text
    s.temperature = 1.0
    s.fpr = 1e-3
    s.batch_size = 250
    s.heldout_examples = 500
    if variant == "runlocal":
        recipes.smoke_model(c)
        c.data.num_train, c.data.num_test = 64, 16
        recipes.smoke_training(c)
        c.eval.final_num_examples, c.eval.batch_size, c.eval.max_new_tokens = 4, 4, 8
        s.texts, s.null_texts, s.length, s.batch_size, s.heldout_examples = 8, 8, 24, 8, 8
        c.mesh.fsdp = 1
    return c


def run(config, workdir, log=print):
    """The pretrain job (the language model), then the watermark study on it."""
    trained = get_job("pretrain").run(config, workdir, experiment=None, log=log)
    s = config.eval.watermark
    model = load_model(workdir, config.model, log=log)
    _, held_out = load_data(config, workdir)
    result = watermark_study(model, held_out, get_tokenizer(config.data.tokenizer), config.data.seq_len,
                             s, log=log)
    strongest = result["deltas"][-1]
    return Summary(job="watermark", metric=f"detection at FPR {s.fpr:g} (delta {strongest['delta']:g})",
                   value=strongest["detection_rate"], steps=trained.steps, seconds=trained.seconds,
                   examples=strongest["texts"], unit=f"texts of {s.length} characters",
                   details={"training": trained.details, "study": result})


def sweep():
    """Context width h x gamma, at the study's deltas."""
    return [{"config.eval.watermark.context": h, "config.eval.watermark.gamma": g}
            for h in (1, 2, 4) for g in (0.25, 0.5)]
