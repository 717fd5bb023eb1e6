"""A statistical watermark in the sampler, and its detector (Kirchenbauer et al. 2023,
"A Watermark for Large Language Models", the "green list" scheme).

Sampling. Before each token is drawn, a keyed hash of the previous `context` tokens (h)
splits the vocabulary: every token id v gets a score u(key, context, v) in [0, 2^32),
and v is green when u < gamma * 2^32. Green logits get +delta, so the sampler leans
towards green tokens where the model leaves it a choice (high entropy) and barely
changes a near-certain token (low entropy). The model's own log-probs (what GRPO and
the server report) are not changed.

Detection needs the key and the text, not the model: each scored token is green with
probability gamma when the text was written without the key, so for T scored tokens
with G green

    z = (G - gamma T) / sqrt(T gamma (1 - gamma)),   p = P(N(0, 1) > z)   (one-sided).

Which tokens are scored: the first h tokens of the text have no full context and are
skipped, and a (context, token) pair that occurred earlier in the text is skipped too
(Kirchenbauer et al. 2023b, "On the Reliability of Watermarks", ignore repeated
n-grams): a repeated pair has the same colour as its first occurrence, so counting it
again would add correlated evidence and inflate z on ordinary repetitive text (code,
lists, a model looping). Each distinct (h + 1)-gram is counted once, at its first
occurrence.

Each token's membership is its own hash bit, so the green list holds gamma |V| tokens
in expectation rather than exactly (the paper draws a permutation); what the test
needs, that each distinct pair is green with probability gamma under the null, holds
the same. The hash is murmur3's 32-bit finaliser over the key's two 32-bit words and
the context ids, in uint32 arithmetic that numpy and jax compute bit for bit alike on
every platform (no Python hash(), which is salted per process); for a fixed context,
distinct ids get distinct scores (the finaliser is a bijection).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax.numpy as jnp
import ml_collections
import numpy as np

from moe_jax.models.config import ConfigError

_M1, _M2 = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35)
_KEY_SALT, _TOKEN_SALT = np.uint32(0x5BD1E995), np.uint32(0x27D4EB2F)
_GOLDEN = np.uint32(0x9E3779B9)
KEY_LIMIT = 2**64


def watermark_config() -> ml_collections.ConfigDict:
    """The `watermark` section of a config (off by default)."""
    c = ml_collections.ConfigDict()
    c.enabled = False
    c.key = -1  # a secret integer in [0, 2^64); -1 = not set (an error when enabled)
    c.gamma = 0.25  # share of the vocabulary that is green at each step
    c.delta = 2.0  # added to green logits
    c.context = 1  # h: previous tokens hashed into the green list
    return c


def _fmix(x):
    """murmur3's 32-bit finaliser on uint32 arrays (numpy or jax): a bijection with
    full avalanche; products wrap mod 2^32 in both libraries."""
    x = x ^ (x >> 16)
    x = x * _M1
    x = x ^ (x >> 13)
    x = x * _M2
    return x ^ (x >> 16)


@dataclasses.dataclass(frozen=True)
class Watermark:
    """key: secret integer in [0, 2^64); gamma: green share in (0, 1); delta >= 0: the
    logit bias; context: h >= 1 previous tokens. Frozen and hashable: a jit static."""

    key: int
    gamma: float = 0.25
    delta: float = 2.0
    context: int = 1

    def __post_init__(self):
        if isinstance(self.key, bool) or not isinstance(self.key, (int, np.integer)) \
                or not 0 <= self.key < KEY_LIMIT:
            raise ConfigError("watermark.key", self.key, "an integer in [0, 2^64) (a secret)")
        if not 0.0 < self.gamma < 1.0:
            raise ConfigError("watermark.gamma", self.gamma, "a fraction in (0, 1)")
        if not (math.isfinite(self.delta) and self.delta >= 0.0):
            raise ConfigError("watermark.delta", self.delta, "a finite number >= 0")
        if isinstance(self.context, bool) or not isinstance(self.context, (int, np.integer)) \
                or self.context < 1:
            raise ConfigError("watermark.context", self.context, "an integer >= 1")

    @classmethod
    def from_config(cls, section) -> "Watermark | None":
        """The config's `watermark` section -> a Watermark, or None when the section is
        absent or not enabled."""
        if section is None or not section.get("enabled", False):
            return None
        return cls(key=int(section.key), gamma=float(section.gamma), delta=float(section.delta),
                   context=int(section.context))

    @property
    def threshold(self) -> int:
        """Scores below this are green."""
        return min(int(round(self.gamma * 2.0**32)), 2**32 - 1)

    @property
    def green_fraction(self) -> float:
        """The null probability of green: gamma as the 32-bit threshold rounds it."""
        return self.threshold / 2.0**32

    def _seed(self, context, xp):
        """context [..., h] ids -> uint32 [...]: the hash of the key and the context."""
        key = xp.asarray([self.key & 0xFFFFFFFF, self.key >> 32], xp.uint32)
        context = xp.asarray(context).astype(xp.uint32)
        seed = _fmix(_fmix(key[:1] ^ _KEY_SALT) ^ key[1:])  # [1]
        seed = xp.broadcast_to(seed, context.shape[:-1] + (1,))
        for j in range(context.shape[-1]):
            # Each position mixed with its own offset: the order of the context counts.
            offset = xp.asarray([(int(_GOLDEN) * (j + 1)) % 2**32], xp.uint32)
            seed = _fmix(seed ^ _fmix(context[..., j:j + 1] + offset))
        return seed  # [..., 1]

    def scores(self, context, tokens, xp=np):
        """context [..., h], tokens [..., N] -> uint32 [..., N] scores of those tokens."""
        with np.errstate(over="ignore"):  # numpy: uint32 products wrap, as intended
            seed = self._seed(context, xp)
            return _fmix(seed ^ _fmix(xp.asarray(tokens).astype(xp.uint32) ^ _TOKEN_SALT))

    def green_mask(self, context, vocab_size: int):
        """context int [B, h] -> bool [B, V] (jax): which ids are green after each row's context."""
        ids = jnp.arange(vocab_size, dtype=jnp.uint32)[None, :]
        return self.scores(context, ids, xp=jnp) < jnp.uint32(self.threshold)

    def bias(self, logits, context):
        """logits [B, V], context [B, h] -> logits with +delta on the green ids (-inf stays)."""
        green = self.green_mask(context, logits.shape[-1])
        return logits + jnp.where(green, jnp.float32(self.delta), jnp.float32(0.0)).astype(logits.dtype)


def initial_context(prompt_tokens, h: int, pad_id: int):
    """Left-padded prompts [B, P] -> their last h tokens [B, h] (pad_id in front of a
    prompt shorter than h, as the left padding itself would be): the first draw's context."""
    batch, width = prompt_tokens.shape
    if width >= h:
        return prompt_tokens[:, width - h:]
    return jnp.concatenate([jnp.full((batch, h - width), pad_id, prompt_tokens.dtype), prompt_tokens], axis=1)


def shift_context(context, token):
    """context [B, h], token [B] -> the context of the next draw."""
    return jnp.concatenate([context[:, 1:], token[:, None].astype(context.dtype)], axis=1)


def context_of(ids, h: int, pad_id: int) -> list[int]:
    """The last h of a row's ids (host side), pad_id in front when there are fewer."""
    ids = list(ids)[-h:]
    return [pad_id] * (h - len(ids)) + ids


class Detection(NamedTuple):
    z: float  # nan when nothing could be scored
    p_value: float  # one-sided: P(a text written without the key scores >= z)
    green: int  # green tokens among the scored
    scored: int  # distinct (context, token) pairs after the first h tokens
    tokens: int  # tokens in the text


def z_score(green: int, scored: int, gamma: float) -> float:
    if scored == 0:
        return float("nan")
    return (green - gamma * scored) / math.sqrt(scored * gamma * (1.0 - gamma))


def p_value(z: float) -> float:
    """One-sided normal tail P(N(0, 1) > z)."""
    return float("nan") if math.isnan(z) else 0.5 * math.erfc(z / math.sqrt(2.0))


def detect(tokens, watermark: Watermark, *, ignore_repeats: bool = True) -> Detection:
    """Score token ids [N] for `watermark` (gamma and context from it; delta unused).

    ignore_repeats: count each (context, token) pair once (the rule above); False counts
    every token after the first h (the paper's basic test, for comparison).
    """
    tokens = np.asarray(tokens, np.int64).reshape(-1)
    h = watermark.context
    n = len(tokens)
    if n <= h:
        return Detection(float("nan"), float("nan"), 0, 0, n)
    windows = np.lib.stride_tricks.sliding_window_view(tokens, h + 1)  # [N - h, h + 1]
    if ignore_repeats:
        _, first = np.unique(windows, axis=0, return_index=True)
        windows = windows[np.sort(first)]
    scores = watermark.scores(windows[:, :h], windows[:, h:], xp=np)[:, 0]
    green = int(np.sum(scores < np.uint32(watermark.threshold)))
    scored = len(windows)
    z = z_score(green, scored, watermark.green_fraction)
    return Detection(z, p_value(z), green, scored, n)
