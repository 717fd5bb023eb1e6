"""The MoE feed-forward block: shared experts + router + routed experts.

y = shared(x) + sum_k g_k(x) * expert_{e_k}(x)

Routed expert weights are stacked along a leading expert axis E so that dispatch
engines and expert parallelism can treat them as one array each.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from moe_jax.layers.initializers import dense_init
from moe_jax.layers.mlp import MLP
from moe_jax.moe import dispatch, expert_parallel
from moe_jax.moe.router import (Router, RouterConfig, balance_loss, expert_counts, router_z_loss,
                                routing_entropy, sequence_balance_loss)


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """What the MoE block reads from the model config (same field names)."""

    router: RouterConfig  # also holds E (num_experts) and K (top_k)
    d_model: int  # D
    expert_ffn: int  # F, per routed expert
    num_shared_experts: int = 1  # shared experts are one MLP of width num_shared_experts * F
    dispatch: str = "capacity"  # an engine of moe.dispatch.ENGINES
    capacity_factor: float = 1.25
    init_std: float = 0.02
    fp8: bool = False  # expert and shared-expert GEMMs in FP8

    @classmethod
    def from_config(cls, m) -> "MoEConfig":
        return cls(router=RouterConfig.from_config(m), d_model=m.d_model, expert_ffn=m.expert_ffn,
                   num_shared_experts=m.num_shared_experts, dispatch=m.dispatch,
                   capacity_factor=m.capacity_factor, init_std=m.init_std, fp8=m.fp8)

    @property
    def num_experts(self) -> int:
        return self.router.num_experts

    @property
    def top_k(self) -> int:
        return self.router.top_k


class MoEBlock(nn.Module):
    """x [B, T, D] -> (y [B, T, D], stats).

    stats: scalars for the losses and logs, plus per token the experts used
    ("expert_index" int32 [B, T, K]), the ones the router would choose itself
    ("preferred_index", the same unless expert_index [B, T, K] is given to replay) and
    the routing entropy ("routing_entropy" [B, T]), which reinforcement learning compares
    between the rollout and the update.
    """

    config: MoEConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def expert_weights(self) -> dispatch.ExpertWeights:
        m = self.config
        shape_in = (m.num_experts, m.d_model, m.expert_ffn)
        axes_in = ("expert", "embed", "expert_mlp")
        gate = self.param("wi_gate", dense_init(m.init_std, axes_in), shape_in, self.param_dtype)
        up = self.param("wi_up", dense_init(m.init_std, axes_in), shape_in, self.param_dtype)
        down = self.param("wo", dense_init(m.init_std, ("expert", "expert_mlp", "embed")),
                          (m.num_experts, m.expert_ffn, m.d_model), self.param_dtype)
        return dispatch.ExpertWeights(gate.astype(self.dtype), up.astype(self.dtype),
                                      down.astype(self.dtype))

    @nn.compact
    def __call__(self, x, expert_index=None):
        """expert_index: int [B, T, K] experts to replay instead of routing (None: route)."""
        m = self.config
        batch, length, d_model = x.shape
        tokens = x.reshape(batch * length, d_model).astype(self.dtype)  # [S, D]
        forced = None if expert_index is None else expert_index.reshape(batch * length, m.top_k)
        routing, logits = Router(m.router, self.param_dtype, name="router")(tokens, forced)
        # Plain engine, or the same engine under expert parallelism when the mesh set by
        # jax.set_mesh has an expert axis > 1.
        engine = expert_parallel.engine_for_active_mesh(m.dispatch, fp8=m.fp8)
        y, num_dropped = engine(tokens, routing.expert_index, routing.combine_weights,
                                self.expert_weights(), m.capacity_factor)
        if m.num_shared_experts:
            y = y + MLP(m.d_model, m.num_shared_experts * m.expert_ffn, m.init_std, self.dtype,
                        self.param_dtype, fp8=m.fp8, name="shared")(tokens)

        load = expert_counts(routing.expert_index, m.num_experts)  # [E]
        stats = {
            "expert_load": load / load.sum(),
            "dropped_fraction": num_dropped.astype(jnp.float32) / routing.expert_index.size,
            "balance_loss": balance_loss(routing.scores, routing.expert_index, m.top_k),
            "seq_balance_loss": sequence_balance_loss(routing.scores, routing.expert_index,
                                                      m.top_k, batch),
            "z_loss": router_z_loss(logits),
            "expert_index": routing.expert_index.reshape(batch, length, m.top_k),
            # The router's own choice: expert_index unless replayed.
            "preferred_index": (routing.expert_index if routing.preferred_index is None
                                else routing.preferred_index).reshape(batch, length, m.top_k),
            "routing_entropy": routing_entropy(routing.scores).reshape(batch, length),
        }
        return y.reshape(batch, length, d_model), stats
