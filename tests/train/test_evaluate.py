from moe_jax.data.tokenizer import CharTokenizer
from moe_jax.train.evaluate import _decode


def test_decode_stops_at_eos_and_rejects_ids_past_the_vocabulary():
    tok = CharTokenizer()
    ids = tok.encode("+10>1") + [tok.eos_id] + [tok.vocab_size + 5]
    assert _decode(tok, ids) == "+10>1"  # what follows <eos> is ignored
    assert _decode(tok, tok.encode("+1") + [tok.vocab_size]) is None
