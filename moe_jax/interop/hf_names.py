"""Every tensor of a Hugging Face DeepSeek checkpoint and where it lives in our variables.

HF stores torch `nn.Linear` weights as [out, in]; we store [in, out], with the head
axis split out (q/q_b/kv_b: [in, H, K]; o: [H, V, D]). Our decoder layers are scanned,
so each stack (`dense_layers`, `moe_layers`) carries a leading layer axis, and routed
experts a further expert axis:

    model.layers.{i}.mlp.experts.{e}.gate_proj.weight [F, D]
        -> params["moe_layers"]["moe"]["wi_gate"][i - num_dense_layers, e] [D, F]

MTP module k is HF layer num_layers + k (`enorm`, `hnorm`, `eh_proj`,
`shared_head.norm`, plus an ordinary decoder layer) -> params["mtp_{k}"]. Its
`embed_tokens` and `shared_head.head` are copies of the main embedding and head, which
our model shares: they are checked on import and written again on export.

Rope dimensions: our rope rotates interleaved pairs (2i, 2i+1), as DeepSeek's released
weights expect (V2; V3 with `rope_interleave` true, the default). A V3 checkpoint with
`rope_interleave` false rotates halves (i, i + R/2); its query and key rope rows are
permuted on import (and back on export) so that the same pairs rotate together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe_jax.models.param_roles import DECODER_PROJECTIONS, role
from moe_jax.moe.router import BIAS_COLLECTION

PARAMS = "params"
# An FP8 checkpoint stores tensor `<name>` as float8 and its block scales as `<name>_scale_inv`.
SCALE_SUFFIX = "_scale_inv"


@dataclass(eq=False)
class Slot:
    """One HF tensor <-> one slice of one of our leaves.

    ours = hf[row_perm].T (if transpose) reshaped to the slice shape, where the slice is
    leaf[index] of a leaf with `leaf_shape` at `path` inside `collection`.
    """

    hf_name: str
    hf_shape: tuple[int, ...]
    collection: str
    path: tuple[str, ...]
    leaf_shape: tuple[int, ...]
    index: tuple[int, ...] = ()
    transpose: bool = False
    row_perm: np.ndarray | None = None
    duplicate: bool = False  # a copy of a tensor stored elsewhere (MTP embed/head)
    linear: bool = False  # a decoder-layer projection: what FP8 checkpoints store in float8

    @property
    def slice_shape(self) -> tuple[int, ...]:
        return self.leaf_shape[len(self.index):]

    def to_ours(self, hf_value: np.ndarray) -> np.ndarray:
        """HF-layout array -> a view (when possible) in our slice layout."""
        x = hf_value if self.row_perm is None else hf_value[self.row_perm]
        return (x.T if self.transpose else x).reshape(self.slice_shape)

    def to_hf(self, our_slice: np.ndarray) -> np.ndarray:
        x = our_slice.reshape(self.hf_shape[::-1] if self.transpose else self.hf_shape)
        x = x.T if self.transpose else x
        return x if self.row_perm is None else x[np.argsort(self.row_perm)]


def rope_rows_interleaved_from_halves(rope_dim: int) -> np.ndarray:
    """Permutation p with ours[j] = hf[p[j]]: rows [0, R/2, 1, R/2+1, ...]."""
    half = rope_dim // 2
    return np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(-1)


def _rope_perm(m, heads: int, head_dim: int, rope_interleaved: bool):
    """Row permutation of a projection whose output is `heads` x [nope | rope] (or None)."""
    if rope_interleaved:
        return None
    perm = np.arange(heads * head_dim).reshape(heads, head_dim)
    rope = perm[:, head_dim - m.qk_rope_head_dim:]
    perm[:, head_dim - m.qk_rope_head_dim:] = rope[:, rope_rows_interleaved_from_halves(m.qk_rope_head_dim)]
    return perm.reshape(-1)


class _Builder:
    def __init__(self):
        self.slots: list[Slot] = []

    def add(self, hf_name, hf_shape, path, slice_shape, stack=(), collection=PARAMS, **kw):
        """stack: ((index, size), ...) leading axes of the leaf (layer, expert)."""
        index = tuple(i for i, _ in stack)
        leaf_shape = tuple(n for _, n in stack) + tuple(slice_shape)
        linear = collection == PARAMS and role(path) in DECODER_PROJECTIONS
        self.slots.append(Slot(hf_name, tuple(hf_shape), collection, tuple(path), leaf_shape, index,
                               linear=linear, **kw))

    def linear(self, hf_name, out_dim, in_dim, path, slice_shape, stack, row_perm=None):
        """An nn.Linear weight [out, in] -> our [in, ...out split...]."""
        self.add(hf_name, (out_dim, in_dim), path, slice_shape, stack, transpose=True,
                 row_perm=row_perm)

    def norm(self, hf_name, dim, path, stack):
        self.add(hf_name, (dim,), path + ("scale",), (dim,), stack)


def _decoder_layer(b: _Builder, m, prefix: str, path: tuple, stack: tuple, use_moe: bool,
                   rope_interleaved: bool, with_bias: bool):
    d, h = m.d_model, m.num_heads
    qk = m.qk_nope_head_dim + m.qk_rope_head_dim
    attn = path + ("attn",)
    q_perm = _rope_perm(m, h, qk, rope_interleaved)
    if m.q_lora_rank:
        b.linear(prefix + "self_attn.q_a_proj.weight", m.q_lora_rank, d, attn + ("q_a",),
                 (d, m.q_lora_rank), stack)
        b.norm(prefix + "self_attn.q_a_layernorm.weight", m.q_lora_rank, attn + ("q_a_norm",), stack)
        b.linear(prefix + "self_attn.q_b_proj.weight", h * qk, m.q_lora_rank, attn + ("q_b",),
                 (m.q_lora_rank, h, qk), stack, q_perm)
    else:
        b.linear(prefix + "self_attn.q_proj.weight", h * qk, d, attn + ("q",), (d, h, qk), stack, q_perm)
    kv_a = m.kv_lora_rank + m.qk_rope_head_dim
    b.linear(prefix + "self_attn.kv_a_proj_with_mqa.weight", kv_a, d, attn + ("kv_a",), (d, kv_a), stack,
             _rope_perm(m, 1, kv_a, rope_interleaved))
    b.norm(prefix + "self_attn.kv_a_layernorm.weight", m.kv_lora_rank, attn + ("kv_a_norm",), stack)
    kv_b = m.qk_nope_head_dim + m.v_head_dim
    b.linear(prefix + "self_attn.kv_b_proj.weight", h * kv_b, m.kv_lora_rank, attn + ("kv_b",),
             (m.kv_lora_rank, h, kv_b), stack)
    b.linear(prefix + "self_attn.o_proj.weight", d, h * m.v_head_dim, attn + ("o",), (h, m.v_head_dim, d), stack)
    b.norm(prefix + "input_layernorm.weight", d, path + ("attn_norm",), stack)
    b.norm(prefix + "post_attention_layernorm.weight", d, path + ("mlp_norm",), stack)
    if not use_moe:
        mlp = path + ("mlp",)
        b.linear(prefix + "mlp.gate_proj.weight", m.dense_ffn, d, mlp + ("gate",), (d, m.dense_ffn), stack)
        b.linear(prefix + "mlp.up_proj.weight", m.dense_ffn, d, mlp + ("up",), (d, m.dense_ffn), stack)
        b.linear(prefix + "mlp.down_proj.weight", d, m.dense_ffn, mlp + ("down",), (m.dense_ffn, d), stack)
        return
    moe, f, e_count = path + ("moe",), m.expert_ffn, m.num_experts
    b.add(prefix + "mlp.gate.weight", (e_count, d), moe + ("router", "gate"), (d, e_count), stack, transpose=True)
    if with_bias:
        b.add(prefix + "mlp.gate.e_score_correction_bias", (e_count,), moe + ("router", "bias"), (e_count,),
              stack, collection=BIAS_COLLECTION)
    for e in range(e_count):
        expert, estack = prefix + f"mlp.experts.{e}.", stack + ((e, e_count),)
        b.linear(expert + "gate_proj.weight", f, d, moe + ("wi_gate",), (d, f), estack)
        b.linear(expert + "up_proj.weight", f, d, moe + ("wi_up",), (d, f), estack)
        b.linear(expert + "down_proj.weight", d, f, moe + ("wo",), (f, d), estack)
    if m.num_shared_experts:
        fs, shared = m.num_shared_experts * f, moe + ("shared",)
        b.linear(prefix + "mlp.shared_experts.gate_proj.weight", fs, d, shared + ("gate",), (d, fs), stack)
        b.linear(prefix + "mlp.shared_experts.up_proj.weight", fs, d, shared + ("up",), (d, fs), stack)
        b.linear(prefix + "mlp.shared_experts.down_proj.weight", d, fs, shared + ("down",), (fs, d), stack)


def checkpoint_slots(m, model_type: str, rope_interleaved: bool = True) -> list[Slot]:
    """All tensors of the HF checkpoint for model config `m`, in HF's layer order.

    model_type "deepseek_v3" adds the router's e_score_correction_bias; a model whose
    router has no bias ("sigmoid") exports zeros there (handled by the exporter).
    """
    b = _Builder()
    with_bias = model_type == "deepseek_v3"
    d, v = m.d_model, m.vocab_size
    b.add("model.embed_tokens.weight", (v, d), ("embed", "embedding"), (v, d))
    for i in range(m.num_layers):
        use_moe = i >= m.num_dense_layers
        name, count, j = ("moe_layers", m.num_layers - m.num_dense_layers, i - m.num_dense_layers) \
            if use_moe else ("dense_layers", m.num_dense_layers, i)
        path, stack = ((name,), ((j, count),)) if m.scan_layers else ((f"{name}_{j}",), ())
        _decoder_layer(b, m, f"model.layers.{i}.", path, stack, use_moe, rope_interleaved, with_bias)
    b.norm("model.norm.weight", d, ("final_norm",), ())
    head = dict(path=("embed", "embedding"), slice_shape=(v, d)) if m.tie_embeddings \
        else dict(path=("head",), slice_shape=(d, v), transpose=True)
    if not m.tie_embeddings:
        b.add("lm_head.weight", (v, d), **head)
    for k in range(m.mtp_depth):
        prefix, path = f"model.layers.{m.num_layers + k}.", (f"mtp_{k}",)
        b.add(prefix + "embed_tokens.weight", (v, d), ("embed", "embedding"), (v, d), duplicate=True)
        b.norm(prefix + "enorm.weight", d, path + ("embed_norm",), ())
        b.norm(prefix + "hnorm.weight", d, path + ("hidden_norm",), ())
        b.add(prefix + "eh_proj.weight", (d, 2 * d), path + ("proj",), (2 * d, d), transpose=True)
        _decoder_layer(b, m, prefix, path + ("layer",), (), m.num_layers > m.num_dense_layers,
                       rope_interleaved, with_bias)
        b.norm(prefix + "shared_head.norm.weight", d, path + ("out_norm",), ())
        b.add(prefix + "shared_head.head.weight", (v, d), duplicate=True, **head)
    return b.slots


def mtp_layer_index(name: str, num_layers: int) -> int | None:
    """k for a tensor of MTP layer num_layers + k, else None."""
    parts = name.split(".")
    if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit():
        layer = int(parts[2])
        return layer - num_layers if layer >= num_layers else None
    return None


def leaf_shapes(slots: list[Slot]) -> dict[tuple[str, tuple[str, ...]], tuple[int, ...]]:
    """(collection, path) -> full leaf shape, in first-appearance order."""
    out = {}
    for s in slots:
        if not s.duplicate:
            out.setdefault((s.collection, s.path), s.leaf_shape)
    return out
