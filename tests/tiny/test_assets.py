"""The quickstart's shipped model config, tokenizer and data are exactly what tests/assets.py builds."""
from __future__ import annotations

from assets import ASSETS, VOCAB_SIZE, write_all


def test_shipped_assets_are_reproducible(tmp_path):
    write_all(tmp_path)
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    shipped = sorted(p.relative_to(ASSETS) for p in ASSETS.rglob("*") if p.is_file())
    assert built == shipped
    for rel in built:
        assert (tmp_path / rel).read_bytes() == (ASSETS / rel).read_bytes(), rel


def test_tokenizer_is_byte_level_with_chat_tokens():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-llama")
    assert len(tokenizer) == VOCAB_SIZE
    assert tokenizer.decode(tokenizer("reverse héllo =").input_ids) == "reverse héllo ="
    assert len(tokenizer("abc").input_ids) == 3  # one token per byte: reversal is learnable per character
    mask = tokenizer.apply_chat_template([{"role": "user", "content": "ab"}, {"role": "assistant", "content": "ba"}],
                                         return_assistant_tokens_mask=True, return_dict=True)["assistant_masks"]
    assert mask == [0, 0, 0, 0, 0, 1, 1, 1]  # <|user|> a b <|end|> <|assistant|> [b a <|end|>]
