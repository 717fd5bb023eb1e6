"""The distillation step: train_step(state, teacher_variables, batch, rng).

The student's objective is the pretraining loss (`moe_jax.train.losses.model_loss`:
CE, MTP, routing losses) with its next-token cross-entropy replaced by the blend of
`distillation_loss`; the routing and MTP terms keep their usual weights. The teacher is
any model with the same vocabulary, run without gradient; its variables are an argument,
never part of the state, so they are neither donated nor updated.
"""

from __future__ import annotations

import jax
import optax

from moe_jax.distill.losses import distillation_loss
from moe_jax.moe.router import BIAS_COLLECTION, LOAD_COLLECTION, update_router_biases
from moe_jax.train.losses import LossWeights, model_loss
from moe_jax.train.state import TrainState


def teacher_logits(teacher, teacher_variables, batch):
    logits, _ = teacher.apply(teacher_variables, batch["inputs"], batch["positions"],
                              batch["segment_ids"])
    return jax.lax.stop_gradient(logits)


def make_distill_train_step(student, teacher, optimizer: optax.GradientTransformation,
                            tau_schedule, alpha: float, weights: LossWeights, bias_update_rate: float):
    """tau_schedule(step) -> temperature; alpha in [0, 1] weighs the KL term; `weights` the
    student's MTP and routing terms; the student's router biases move by bias_update_rate."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distill.alpha = {alpha!r}: expected a number in [0, 1]")
    rate = bias_update_rate

    def loss_fn(params, router_bias, batch, targets_logits, tau):
        (logits, extras), mutated = student.apply(
            {"params": params, BIAS_COLLECTION: router_bias}, batch["inputs"], batch["positions"],
            batch["segment_ids"], mutable=[LOAD_COLLECTION])
        usual, metrics = model_loss(logits, extras, batch, weights)
        blend, distill_metrics = distillation_loss(
            logits, targets_logits, batch["targets"], batch["loss_mask"], tau=tau, alpha=alpha)
        loss = blend + (usual - metrics["ce_loss"])  # swap plain CE for the blend
        metrics = dict(metrics, **distill_metrics, loss=loss)
        return loss, (metrics, mutated.get(LOAD_COLLECTION, {}))

    def train_step(state: TrainState, teacher_variables, batch, rng):
        del rng
        soft = teacher_logits(teacher, teacher_variables, batch)
        tau = tau_schedule(state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, (metrics, loads)), grads = grad_fn(state.params, state.router_bias, batch, soft, tau)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        router_bias = update_router_biases(state.router_bias, loads, rate) if loads else state.router_bias
        metrics = dict(metrics, grad_norm=optax.global_norm(grads))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             router_bias=router_bias), metrics

    return train_step
