"""DeepSeek-style decoder: embeddings, dense-first layers, MoE layers, head, MTP.

    tokens [B, T] -> embed -> num_dense_layers x (MLA + dense MLP)
                           -> (num_layers - num_dense_layers) x (MLA + MoE)
                           -> final norm -> head -> logits [B, T, V]

Each stack of identical layers runs under `nn.scan` (parameters stacked on a leading
"layers" axis) so compile time does not grow with depth. Multi-token prediction
(DeepSeek-V3) chains `mtp_depth` extra modules: module k combines the previous hidden
state at position i with the embedding of token i+k and predicts token i+k+1 through
the shared head.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_jax.layers.attention import MLA, MLACache, MLAConfig
from moe_jax.layers.fp8 import matmul
from moe_jax.layers.initializers import dense_init
from moe_jax.layers.mlp import MLP
from moe_jax.layers.norms import RMSNorm
from moe_jax.models.config import REMAT_POLICIES
from moe_jax.moe.block import MoEBlock, MoEConfig
from moe_jax.moe.router import BIAS_COLLECTION, LOAD_COLLECTION


@dataclasses.dataclass(frozen=True)
class LayerConfig:
    """What a decoder layer (and an MTP module around one) reads from the model config."""

    attention: MLAConfig
    moe: MoEConfig
    d_model: int  # D
    dense_ffn: int  # F of the dense layers' MLP
    rms_eps: float = 1e-6
    init_std: float = 0.02
    dtype: str = "float32"  # compute
    param_dtype: str = "float32"  # master weights
    fp8: bool = False

    @classmethod
    def from_config(cls, m) -> "LayerConfig":
        return cls(attention=MLAConfig.from_config(m), moe=MoEConfig.from_config(m), d_model=m.d_model,
                   dense_ffn=m.dense_ffn, rms_eps=m.rms_eps, init_std=m.init_std, dtype=m.dtype,
                   param_dtype=m.param_dtype, fp8=m.fp8)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """What the decoder reads from the model config; `Transformer.from_config(m)` builds it."""

    layer: LayerConfig
    vocab_size: int  # V
    d_model: int  # D
    num_layers: int  # main decoder layers, dense ones included
    num_dense_layers: int  # the first layers use a dense MLP instead of experts
    mtp_depth: int = 0
    tie_embeddings: bool = False
    init_std: float = 0.02
    rms_eps: float = 1e-6
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"  # "none" or a key of models.config.REMAT_POLICIES
    scan_layers: bool = True
    fp8: bool = False  # MTP's projection (the head and embedding always stay in dtype)

    @classmethod
    def from_config(cls, m) -> "TransformerConfig":
        return cls(layer=LayerConfig.from_config(m), vocab_size=m.vocab_size, d_model=m.d_model,
                   num_layers=m.num_layers, num_dense_layers=m.num_dense_layers,
                   mtp_depth=m.mtp_depth, tie_embeddings=m.tie_embeddings, init_std=m.init_std,
                   rms_eps=m.rms_eps, dtype=m.dtype, param_dtype=m.param_dtype,
                   remat_policy=m.remat_policy, scan_layers=m.scan_layers, fp8=m.fp8)


def dtype_of(name: str):
    return jnp.dtype(name)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.)); returns (x, moe stats)."""

    config: LayerConfig
    use_moe: bool

    @nn.compact
    def __call__(self, x, positions, segment_ids, expert_index=None, cache: MLACache | None = None,
                 prefill: bool = False):
        """With `cache` (decoding), returns (x, stats, new tokens' (c_kv, k_rope)); see MLA.
        expert_index: int [B, T, K] experts to replay in an MoE layer (None: route)."""
        m = self.config
        dtype, param_dtype = dtype_of(m.dtype), dtype_of(m.param_dtype)
        norm = lambda name: RMSNorm(m.rms_eps, dtype, param_dtype, name=name)
        if cache is None:
            x = x + MLA(m.attention, dtype, param_dtype, name="attn")(norm("attn_norm")(x), positions,
                                                                      segment_ids)
        else:
            attn, new_latents = MLA(m.attention, dtype, param_dtype, name="attn")(
                norm("attn_norm")(x), positions, segment_ids, cache=cache, prefill=prefill)
            x = x + attn
        h = norm("mlp_norm")(x)
        if self.use_moe:
            out, stats = MoEBlock(m.moe, dtype, param_dtype, name="moe")(h, expert_index)
        else:
            out, stats = MLP(m.d_model, m.dense_ffn, m.init_std, dtype, param_dtype, fp8=m.fp8,
                             name="mlp")(h), {}
        if cache is None:
            return x + out, stats
        return x + out, stats, new_latents


UNROLL_UP_TO = 4  # layers; see _layer_stack


def _layer_stack(m: TransformerConfig, use_moe: bool, count: int, name: str):
    """`count` DecoderLayers: one module under nn.scan, or a list when scan_layers=False."""
    layer_cls = DecoderLayer
    if m.remat_policy != "none":
        layer_cls = nn.remat(DecoderLayer, policy=REMAT_POLICIES[m.remat_policy],
                             prevent_cse=not m.scan_layers)
    if not m.scan_layers:
        return [layer_cls(m.layer, use_moe, name=f"{name}_{i}") for i in range(count)]
    scanned = nn.scan(
        layer_cls,
        # A short stack runs as straight-line code: each layer's parameters are then
        # static slices of the stacked arrays, and XLA can overlap one layer's tail with
        # the next one's head (the tiny CPU step: ~8% faster, same numbers). Deeper stacks
        # keep the loop, so compile time does not grow with depth.
        unroll=count if count <= UNROLL_UP_TO else 1,
        variable_axes={"params": 0, BIAS_COLLECTION: 0, LOAD_COLLECTION: 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast, nn.broadcast, 0),  # positions, segment ids, per-layer replayed experts
        length=count,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    return scanned(m.layer, use_moe, name=name)


def _run_stack(stack, x, positions, segment_ids, expert_index=None):
    """Apply a layer stack; stats come back stacked on a leading layer axis either way.
    expert_index: None, or int [layers, B, T, K] experts to replay per layer."""
    if not isinstance(stack, (list, tuple)):
        return stack(x, positions, segment_ids, expert_index)
    all_stats = []
    for i, layer in enumerate(stack):
        x, stats = layer(x, positions, segment_ids, None if expert_index is None else expert_index[i])
        all_stats.append(stats)
    return x, jax.tree.map(lambda *s: jnp.stack(s), *all_stats)


class MTPModule(nn.Module):
    """One multi-token-prediction depth: h_k = Layer(W [norm(emb(t_{i+k})); norm(h_{k-1})])."""

    config: LayerConfig
    use_moe: bool  # the module's layer is an MoE layer when the main model has any

    @nn.compact
    def __call__(self, hidden, next_embeddings, positions, segment_ids, cache: MLACache | None = None,
                 prefill: bool = False):
        """-> (h_k, out_norm(h_k), stats), and the new latents with `cache` (as DecoderLayer)."""
        m = self.config
        dtype, param_dtype = dtype_of(m.dtype), dtype_of(m.param_dtype)
        e = RMSNorm(m.rms_eps, dtype, param_dtype, name="embed_norm")(next_embeddings)
        h = RMSNorm(m.rms_eps, dtype, param_dtype, name="hidden_norm")(hidden)
        w = self.param("proj", dense_init(m.init_std, ("mtp_concat", "embed")),
                       (2 * m.d_model, m.d_model), param_dtype)
        x = matmul(jnp.concatenate([e, h], axis=-1), w.astype(dtype), fp8=m.fp8)  # [B, T, 2D] -> [B, T, D]
        layer = DecoderLayer(m, self.use_moe, name="layer")
        if cache is None:
            x, stats = layer(x, positions, segment_ids)
        else:
            x, stats, new_latents = layer(x, positions, segment_ids, cache=cache, prefill=prefill)
        normed = RMSNorm(m.rms_eps, dtype, param_dtype, name="out_norm")(x)
        return (x, normed, stats) if cache is None else (x, normed, stats, new_latents)


class Transformer(nn.Module):
    """tokens [B, T] -> (logits [B, T, V] float32, extras).

    extras: "moe_stats" (per-layer routing statistics stacked on a leading layer axis; its
    "expert_index" [M, B, T, K] are the experts each of the M main MoE layers used),
    "mtp_logits" ([mtp_depth, B, T, V]; position i of depth k predicts token i+k+1),
    "mtp_stats" (routing statistics of the MTP layers).
    """

    config: TransformerConfig

    @classmethod
    def from_config(cls, m) -> "Transformer":
        """The decoder of a model config section (`config.model`)."""
        return cls(TransformerConfig.from_config(m))

    def setup(self):
        m = self.config
        if not isinstance(m, TransformerConfig):
            raise TypeError(f"Transformer(config): expected a TransformerConfig, got {type(m).__name__}; "
                            f"build the model from a config section with Transformer.from_config(m)")
        dtype, param_dtype = dtype_of(m.dtype), dtype_of(m.param_dtype)
        self.embed = nn.Embed(
            m.vocab_size, m.d_model, dtype=dtype, param_dtype=param_dtype,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(stddev=m.init_std), ("vocab", "embed")))
        if m.num_dense_layers:
            self.dense_layers = _layer_stack(m, False, m.num_dense_layers, "dense_layers")
        if m.num_layers > m.num_dense_layers:
            self.moe_layers = _layer_stack(m, True, m.num_layers - m.num_dense_layers, "moe_layers")
        self.final_norm = RMSNorm(m.rms_eps, dtype, param_dtype)
        if not m.tie_embeddings:
            self.head = self.param("head", dense_init(m.init_std, ("embed", "vocab")),
                                   (m.d_model, m.vocab_size), param_dtype)
        use_moe = m.num_layers > m.num_dense_layers
        self.mtp = [MTPModule(m.layer, use_moe, name=f"mtp_{k}") for k in range(m.mtp_depth)]

    def logits(self, normed_hidden):
        m = self.config
        if m.tie_embeddings:
            out = self.embed.attend(normed_hidden)
        else:
            out = normed_hidden @ self.head.astype(dtype_of(m.dtype))
        return out.astype(jnp.float32)

    def __call__(self, tokens, positions=None, segment_ids=None, expert_index=None):
        """expert_index: None, or int [B, T, M, K] experts for the M main MoE layers to use
        instead of routing (routing replay: the combine weights still come from the
        current router). MTP layers always route."""
        m = self.config
        if expert_index is not None:
            moe_layers = m.num_layers - m.num_dense_layers
            if expert_index.ndim != 4 or expert_index.shape[2] != moe_layers:
                raise ValueError(f"expert_index of shape {expert_index.shape}: expected [B, T, "
                                 f"{moe_layers} MoE layers, top_k]")
            expert_index = jnp.moveaxis(expert_index, 2, 0)  # [M, B, T, K], scanned over M
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        x = self.embed(tokens)
        if m.num_dense_layers:
            x, _ = _run_stack(self.dense_layers, x, positions, segment_ids)
        moe_stats = {}
        if m.num_layers > m.num_dense_layers:
            x, moe_stats = _run_stack(self.moe_layers, x, positions, segment_ids, expert_index)
        logits = self.logits(self.final_norm(x))

        mtp_logits, mtp_stats = [], []
        hidden = x
        for k, module in enumerate(self.mtp, start=1):
            # Token i+k, padded at the end; the loss masks positions past the sequence.
            shifted = jnp.pad(tokens[:, k:], ((0, 0), (0, k)))
            hidden, normed, stats = module(hidden, self.embed(shifted), positions, segment_ids)
            mtp_logits.append(self.logits(normed))
            mtp_stats.append(stats)
        extras = {"moe_stats": moe_stats, "mtp_stats": mtp_stats}
        if mtp_logits:
            extras["mtp_logits"] = jnp.stack(mtp_logits)
        return logits, extras


# ----------------------------------------------------------------------------------------
# Decoding path: the same modules and parameters, run layer by layer over a KV cache that
# holds MLA's latents. The training forward above does not go through any of this.


def layer_stacks(m):
    """[(name, use_moe, count)] of the main decoder stacks, in order; names match params."""
    stacks = []
    if m.num_dense_layers:
        stacks.append(("dense_layers", False, m.num_dense_layers))
    if m.num_layers > m.num_dense_layers:
        stacks.append(("moe_layers", True, m.num_layers - m.num_dense_layers))
    return stacks


def _layer_variables(m, params, router_bias, name, count):
    """Per-stack variables with a leading layer axis, whichever way the layers were built."""
    if m.scan_layers:
        p, b = params[name], router_bias.get(name, {})
    else:
        p = jax.tree.map(lambda *a: jnp.stack(a), *[params[f"{name}_{i}"] for i in range(count)])
        per_layer = [router_bias.get(f"{name}_{i}", {}) for i in range(count)]
        b = jax.tree.map(lambda *a: jnp.stack(a), *per_layer) if per_layer[0] else {}
    return p, b


def forward_with_cache(m, params, router_bias, tokens, positions, segment_ids, caches, index,
                       valid, *, prefill: bool = False, details: bool = False):
    """Run the main model on T new tokens against a cache; MTP modules are not used.

    tokens, positions, segment_ids: [B, T]; caches: {stack name: (c_kv [n, B, S, L],
    k_rope [n, B, S, R])}; index: int32 [] slot of the first new token; valid: bool [B, S]
    (see MLACache). -> (logits [B, T, V] float32, caches with the new tokens written).
    With prefill=True the new tokens are the whole context and attend to each other
    only (segment_ids mask padding), exactly as `Transformer.__call__` computes them.
    `m` is the model config section or a TransformerConfig.

    details=True adds a third result: {"hidden": the last layer's output before the
    final norm [B, T, D] (what the first MTP module reads), "expert_index": int32
    [B, T, M, K] experts each of the M main MoE layers chose, or None without any}.
    """
    config = m if isinstance(m, TransformerConfig) else TransformerConfig.from_config(m)
    model = Transformer(config)
    x = model.apply({"params": params}, tokens, method=lambda mod, t: mod.embed(t))
    new_caches, expert_index = {}, None
    for name, use_moe, count in layer_stacks(config):
        layer = DecoderLayer(config.layer, use_moe)
        stack_params, stack_bias = _layer_variables(config, params, router_bias, name, count)

        def one_layer(carry, layer_vars, layer=layer, use_moe=use_moe):
            x, c_kv_all, k_rope_all, i = carry
            p, b = layer_vars
            variables = {"params": p, BIAS_COLLECTION: b} if b else {"params": p}
            cache = MLACache(c_kv_all[i], k_rope_all[i], index, valid)
            x, stats, (c_new, k_rope_new) = layer.apply(variables, x, positions, segment_ids,
                                                        cache=cache, prefill=prefill)
            at, update = (i, 0, index, 0), jax.lax.dynamic_update_slice
            c_kv_all = update(c_kv_all, c_new[None].astype(c_kv_all.dtype), at)
            k_rope_all = update(k_rope_all, k_rope_new[None].astype(k_rope_all.dtype), at)
            return (x, c_kv_all, k_rope_all, i + 1), (stats["expert_index"] if use_moe else None)

        c_kv_all, k_rope_all = caches[name]
        carry = (x, c_kv_all, k_rope_all, jnp.zeros((), jnp.int32))
        (x, c_kv_all, k_rope_all, _), chosen = jax.lax.scan(one_layer, carry, (stack_params, stack_bias))
        new_caches[name] = (c_kv_all, k_rope_all)
        if use_moe:
            expert_index = jnp.moveaxis(chosen, 0, 2)  # [M, B, T, K] -> [B, T, M, K]
    logits = model.apply({"params": params}, x,
                         method=lambda mod, h: mod.logits(mod.final_norm(h)))
    if details:
        return logits, new_caches, {"hidden": x, "expert_index": expert_index}
    return logits, new_caches


def mtp_with_cache(m, params, router_bias, hidden, next_tokens, positions, segment_ids, cache,
                   index, valid, *, prefill: bool = False):
    """The first MTP module on T positions against its own one-layer cache.

    hidden [B, T, D]: the main model's last-layer output (before the final norm) at
    those positions; next_tokens [B, T]: the token one position further (at position i
    the module reads h(i) and emb(t_{i+1}) and predicts t_{i+2}); cache: (c_kv [B, S, L],
    k_rope [B, S, R]); index, valid, prefill as in `forward_with_cache`.
    -> (logits [B, T, V] float32, cache with the T positions written).
    """
    config = m if isinstance(m, TransformerConfig) else TransformerConfig.from_config(m)
    if config.mtp_depth < 1:
        raise ValueError("speculative drafts need an MTP module: model.mtp_depth >= 1")
    model = Transformer(config)
    embedded = model.apply({"params": params}, next_tokens, method=lambda mod, t: mod.embed(t))
    module = MTPModule(config.layer, config.num_layers > config.num_dense_layers)
    bias = router_bias.get("mtp_0", {})
    variables = {"params": params["mtp_0"], BIAS_COLLECTION: bias} if bias else {"params": params["mtp_0"]}
    c_kv, k_rope = cache
    _, normed, _, (c_new, k_rope_new) = module.apply(
        variables, hidden, embedded, positions, segment_ids,
        cache=MLACache(c_kv, k_rope, index, valid), prefill=prefill)
    at, update = (0, index, 0), jax.lax.dynamic_update_slice
    cache = (update(c_kv, c_new.astype(c_kv.dtype), at), update(k_rope, k_rope_new.astype(k_rope.dtype), at))
    logits = model.apply({"params": params}, normed, method=lambda mod, h: mod.logits(h))
    return logits, cache
