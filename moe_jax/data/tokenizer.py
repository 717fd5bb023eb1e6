"""Tokenizers: a fixed character-level vocabulary for the synthetic tasks, and a
thin wrapper around HuggingFace `tokenizer.json` files with the same interface.

Both expose the interface the data pipeline, the sampler and the reward code use:

    tok.encode(text) -> list[int]       no special tokens are added
    tok.decode(ids) -> str              stops at the first <eos>, drops <pad>/<bos>
    tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id

`encode` never maps a character silently to an "unknown" id: it raises a
ValueError naming the character, because a silently corrupted prompt in a
verifiable-reward task yields a wrong reward and no error.

There is deliberately no separator token between prompt and response: every task
prompt ends in its own delimiter (`=` for arithmetic and countdown), and the
boundary the loss needs is known from token counts (see `pipeline.py`).

`get_tokenizer("char")` or `get_tokenizer("/path/to/tokenizer.json")` picks one.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable, Sequence
from typing import Protocol

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


class Tokenizer(Protocol):
    """What the rest of moe_jax may assume about a tokenizer."""

    vocab_size: int
    pad_id: int
    bos_id: int | None
    eos_id: int

    def encode(self, text: str) -> list[int]:
        ...

    def decode(self, ids: Iterable[int]) -> str:
        ...


def _char_vocabulary() -> tuple[str, ...]:
    """The character vocabulary after the three special tokens.

    Order is fixed forever (ids are baked into checkpoints): digits first so that
    ids 3..12 are '0'..'9', then the symbols of the arithmetic tasks, whitespace,
    the punctuation generative-reward-model text needs ("Final Scores: [[2, 7]]."),
    letters, and finally every remaining printable ASCII character so that any
    plain-ASCII text can be encoded.
    """
    head = (
            string.digits
            + "+-*/=><()"
            + " \n"
            + ",:;.!?'\"[]{}"
            + string.ascii_lowercase
            + string.ascii_uppercase
    )
    rest = [c for c in string.printable if c not in head and c not in "\t\r\x0b\x0c"]
    chars = tuple(head) + tuple(rest)
    assert len(set(chars)) == len(chars)
    return chars


class CharTokenizer:
    """Character-level tokenizer over printable ASCII plus newline.

    Ids: <pad>=0, <bos>=1, <eos>=2, then '0'..'9' = 3..12, then the characters of
    `_char_vocabulary()` in order; `vocab_size` is 99. Tabs, carriage returns and
    non-ASCII characters are not in the vocabulary and make `encode` raise.
    """

    def __init__(self):
        self._id_to_token: tuple[str, ...] = (PAD, BOS, EOS) + _char_vocabulary()
        self._char_to_id = {c: i for i, c in enumerate(self._id_to_token) if i >= 3}
        self.vocab_size = len(self._id_to_token)
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    def encode(self, text: str) -> list[int]:
        """Maps each character of `text` to its id; raises ValueError on unknown ones."""
        try:
            return [self._char_to_id[c] for c in text]
        except KeyError as e:
            position = text.index(e.args[0])
            raise ValueError(
                    f"CharTokenizer cannot encode character {e.args[0]!r} at position"
                    f" {position} of {text[:60]!r}"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Inverse of `encode` for generated ids.

        Decoding stops at the first <eos> (it and everything after are dropped) and
        skips <pad> and <bos> wherever they occur, so a row of sampler output can be
        decoded as is. Ids outside the vocabulary raise ValueError.
        """
        chars = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size})")
            chars.append(self._id_to_token[i])
        return "".join(chars)

    def id_to_token(self, i: int) -> str:
        return self._id_to_token[i]


# Names used for special tokens by common tokenizer.json files, in order of
# preference; DeepSeek's own files use the fullwidth-bar spellings.
_BOS_CANDIDATES = ("<bos>", "<s>", "<｜begin▁of▁sentence｜>", "<|begin_of_text|>", "[CLS]")
_EOS_CANDIDATES = ("<eos>", "</s>", "<｜end▁of▁sentence｜>", "<|end_of_text|>",
                                      "<|endoftext|>", "[SEP]")
_PAD_CANDIDATES = ("<pad>", "<｜▁pad▁｜>", "<|pad|>", "[PAD]")


class HFTokenizer:
    """A HuggingFace `tokenizers` tokenizer behind the `Tokenizer` interface.

    Special tokens are found by name (`_BOS_CANDIDATES` etc.) unless given. A file
    without a pad token pads with <eos>, which is harmless because padding is
    always masked by segment ids; one without a BOS token gets `bos_id=None` and
    the pipeline then starts sequences directly with the prompt.
    """

    def __init__(self, path: str | os.PathLike, *, bos_token: str | None = None,
                              eos_token: str | None = None, pad_token: str | None = None):
        import tokenizers  # Imported here so `CharTokenizer` users need not have it.

        self._tok = tokenizers.Tokenizer.from_file(os.fspath(path))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos_id = self._find_special(eos_token, _EOS_CANDIDATES, "eos", required=True)
        self.bos_id = self._find_special(bos_token, _BOS_CANDIDATES, "bos", required=False)
        pad_id = self._find_special(pad_token, _PAD_CANDIDATES, "pad", required=False)
        self.pad_id = self.eos_id if pad_id is None else pad_id
        unk = getattr(self._tok.model, "unk_token", None)
        self._unk_id = self._tok.token_to_id(unk) if unk else None

    def _find_special(self, given: str | None, candidates: Sequence[str], role: str,
                                        required: bool) -> int | None:
        names = (given,) if given is not None else candidates
        for name in names:
            token_id = self._tok.token_to_id(name)
            if token_id is not None:
                return token_id
        if required or given is not None:
            raise ValueError(
                    f"tokenizer has none of the {role} tokens {list(names)}; pass"
                    f" {role}_token= explicitly")
        return None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without added special tokens; raises on <unk>."""
        encoding = self._tok.encode(text, add_special_tokens=False)
        if self._unk_id is not None and self._unk_id in encoding.ids:
            start, end = encoding.offsets[encoding.ids.index(self._unk_id)]
            raise ValueError(f"tokenizer cannot encode {text[start:end]!r} in {text[:60]!r}")
        return list(encoding.ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Decodes up to (excluding) the first <eos>, skipping special tokens."""
        kept = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            kept.append(i)
        return self._tok.decode(kept, skip_special_tokens=True)


def load_hf_tokenizer(path: str | os.PathLike, **special_tokens) -> HFTokenizer:
    """Loads a `tokenizer.json`; keyword args name special tokens (`eos_token=`...)."""
    return HFTokenizer(path, **special_tokens)


def get_tokenizer(name_or_path: str | os.PathLike) -> Tokenizer:
    """Tokenizer registry used by configs (`config.data.tokenizer = "char"`).

    "char" gives the `CharTokenizer`; a path to a `tokenizer.json` file, or to a
    directory containing one, gives an `HFTokenizer`.
    """
    name = os.fspath(name_or_path)
    if name == "char":
        return CharTokenizer()
    if name.endswith("tokenizer.json"):
        return load_hf_tokenizer(name)
    if os.path.isdir(name) and os.path.exists(os.path.join(name, "tokenizer.json")):
        return load_hf_tokenizer(os.path.join(name, "tokenizer.json"))
    raise ValueError(
            f"unknown tokenizer {name!r}: expected 'char', a path to tokenizer.json, or"
            " a directory containing one")
