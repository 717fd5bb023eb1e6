from moe_jax.analysis.exact_match import decode_response
from moe_jax.data.tokenizer import CharTokenizer


def test_decode_stops_at_eos_and_rejects_ids_past_the_vocabulary():
    tok = CharTokenizer()
    ids = tok.encode("+10>1") + [tok.eos_id] + [tok.vocab_size + 5]
    assert decode_response(tok, ids) == "+10>1"  # what follows <eos> is ignored
    assert decode_response(tok, tok.encode("+1") + [tok.vocab_size]) is None
