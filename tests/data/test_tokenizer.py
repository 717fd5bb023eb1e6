"""Tests for moe_jax.data.tokenizer."""

import re
import string

import pytest

from moe_jax.data import tokenizer as tokenizer_lib


@pytest.fixture(scope="module")
def char():
    return tokenizer_lib.CharTokenizer()


def test_char_ids_are_fixed(char):
    # Ids are baked into checkpoints: specials 0..2, then '0'..'9' = 3..12.
    assert (char.pad_id, char.bos_id, char.eos_id) == (0, 1, 2)
    assert char.encode("0123456789") == list(range(3, 13))
    # 3 specials + 95 printable ASCII characters (space..'~') + newline.
    assert char.vocab_size == 3 + 95 + 1


@pytest.mark.parametrize("text", [
    "64-973-75=+4600-3790=-9090-5700=-4890>-984",
    "25,4,3,7:104=25*4=100,100-3=97,97+7=104>25*4-3+7",
    "Principle: be correct.\nFinal Scores: [[2, 7]]",
    "Is it 'right'? \"Yes\"! (a/b) {x;y}",
    string.printable.replace("\t", "").replace("\r", "").replace("\x0b", "").replace("\x0c", ""),
    "",
])
def test_char_round_trip(char, text):
    ids = char.encode(text)
    assert len(ids) == len(text)
    assert all(3 <= i < char.vocab_size for i in ids)
    assert char.decode(ids) == text


def test_char_decode_stops_at_eos_and_skips_pad_bos(char):
    ids = [char.bos_id] + char.encode("1+1=") + [char.pad_id] + char.encode("2")
    ids += [char.eos_id] + char.encode("junk") + [char.pad_id] * 3
    assert char.decode(ids) == "1+1=2"


@pytest.mark.parametrize("bad, shown", [("a\tb", "'\\t'"), ("naïve", "'ï'"), ("x→y", "'→'")])
def test_char_unknown_character_raises_naming_it(char, bad, shown):
    with pytest.raises(ValueError, match=re.escape(shown)):
        char.encode(bad)


def test_char_decode_rejects_out_of_range_ids(char):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        char.decode([5, char.vocab_size])


def _build_tokenizer_json(path):
    """A tiny word-level tokenizer.json, written by `tokenizers` itself."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = ["<pad>", "<s>", "</s>", "<unk>", "Final", "Scores", ":", "[", "]", ",",
             "2", "7", "hello", "world"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # Joins words with spaces.
    tok.add_special_tokens(["<pad>", "<s>", "</s>"])
    tok.save(str(path))
    return vocab


def test_hf_tokenizer_json(tmp_path):
    path = tmp_path / "tokenizer.json"
    vocab = _build_tokenizer_json(path)
    tok = tokenizer_lib.load_hf_tokenizer(path)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (vocab["<pad>"], vocab["<s>"], vocab["</s>"])
    assert tok.vocab_size == len(vocab)
    ids = tok.encode("hello world")
    assert ids == [vocab["hello"], vocab["world"]]
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id, vocab["2"]]) == "hello world"
    with pytest.raises(ValueError, match="zebra"):
        tok.encode("hello zebra")


def test_hf_tokenizer_special_token_overrides(tmp_path):
    path = tmp_path / "tokenizer.json"
    vocab = _build_tokenizer_json(path)
    tok = tokenizer_lib.load_hf_tokenizer(path, eos_token="]", bos_token="[")
    assert (tok.bos_id, tok.eos_id) == (vocab["["], vocab["]"])
    with pytest.raises(ValueError, match="eos_token="):
        tokenizer_lib.load_hf_tokenizer(path, eos_token="<nope>")


def test_get_tokenizer_registry(tmp_path):
    assert isinstance(tokenizer_lib.get_tokenizer("char"), tokenizer_lib.CharTokenizer)
    path = tmp_path / "tokenizer.json"
    _build_tokenizer_json(path)
    by_file = tokenizer_lib.get_tokenizer(str(path))
    by_dir = tokenizer_lib.get_tokenizer(tmp_path)
    assert isinstance(by_file, tokenizer_lib.HFTokenizer)
    assert by_dir.encode("Final Scores") == by_file.encode("Final Scores")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        tokenizer_lib.get_tokenizer("gpt5")
