"""Tokenizers from local directories, the card-task tokenizer, and on-device detokenisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvlm_jax.text import byte_table as bt
from rlvlm_jax.text.tokenizer import (
    build_card_tokenizer,
    card_task_corpus,
    encode_prompts,
    load_tokenizer,
    model_token_ids,
)

TEXTS = [
    '{\n "thoughts": "My total is 15.",\n "action": "hit"\n}',
    'café ✓ 24 → "action": "=" and again "action": "+"',
    "  leading spaces, tabs\tand\nnewlines  ",
]


@pytest.fixture(scope="module")
def card_tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("cardtok")
    build_card_tokenizer(str(path), vocab_size=1024, corpus=card_task_corpus(40))
    return load_tokenizer(str(path))


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory):
    """A LLaMA-style (SentencePiece layout: "▁" spaces, <0xNN> byte fallback) tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never",
                                                 split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(card_task_corpus(20), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    path = tmp_path_factory.mktemp("sptok")
    fast.save_pretrained(str(path))
    return load_tokenizer(str(path))


def test_card_tokenizer_loads_through_autotokenizer(card_tok):
    from transformers import AutoTokenizer

    from rlvlm_jax.envs import prompts

    again = AutoTokenizer.from_pretrained(card_tok.name_or_path, local_files_only=True)
    assert len(again) == len(card_tok) <= 1024
    assert model_token_ids(card_tok) == {"image_token_id": 4, "pad_token_id": 0,
                                         "eos_token_id": 2}
    text = prompts.full_prompt("Points24", [1, "+", 3])
    ids = card_tok(text)["input_ids"]
    assert ids[0] == card_tok.bos_token_id
    assert card_tok.decode(ids[1:]) == text
    assert len(ids) < len(text) / 3  # it learned the templates' words


def test_encode_prompts_expands_image_and_left_pads(card_tok):
    ids, mask = encode_prompts(card_tok, ["USER: <image>\nhi", "x"], num_image_tokens=5,
                               length=20)
    assert ids.shape == mask.shape == (2, 20) and ids.dtype == np.int32
    assert (ids[0] == 4).sum() == 5 and (ids[1] == 4).sum() == 0
    assert mask[1].tolist() == [0] * 18 + [1, 1] and (ids[1, :18] == 0).all()
    assert ids[0, mask[0].argmax()] == card_tok.bos_token_id
    with pytest.raises(ValueError, match="longer than the padded length 6"):
        encode_prompts(card_tok, ["USER: <image>\nhi"], num_image_tokens=5, length=6)


def _check_detok(tok, table, text, pad_to=64):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n = len(ids)
    padded = np.array(ids + [7] * (pad_to - n), np.int32)  # junk after `length` is ignored
    out = jax.jit(bt.detokenize)(table, padded, n)
    raw = bytes(np.asarray(out.bytes)[:int(out.num_bytes)])
    assert not np.asarray(out.bytes)[int(out.num_bytes):].any()
    starts, ends = np.asarray(out.token_start), np.asarray(out.token_end)
    for i, t in enumerate(ids):
        assert raw[starts[i]:ends[i]] == bt.token_bytes_list(tok)[t]
    decoded = raw.decode("utf-8")
    # Character spans cut the decoded string into the tokens' pieces.
    cs, ce = (np.asarray(x) for x in jax.jit(bt.token_char_spans)(out))
    assert cs[0] == 0 and ce[n - 1] == len(decoded) and (cs[1:n] == ce[:n - 1]).all()
    for c in range(len(decoded)):
        k = int(bt.char_to_token(out, c))
        assert cs[k] <= c < ce[k]
    # Pattern search agrees with Python's.
    for pat in (b'"action":', b"\n", b"zzz"):
        assert int(bt.find_bytes(out, pat)) == raw.find(pat)
        assert int(bt.find_bytes(out, pat, last=True)) == raw.rfind(pat)
    if raw.find(b'"action":') >= 0:
        k = int(bt.byte_to_token(out, raw.find(b'"action":')))
        assert starts[k] <= raw.find(b'"action":') < ends[k]
    return decoded


def test_byte_level_detokenize_is_exact(card_tok):
    table = bt.byte_table(card_tok, vocab_size=1100)  # model vocab may exceed the tokenizer's
    assert table.bytes.shape[0] == 1100 and int(table.lengths[1050]) == 0
    assert int(table.lengths[card_tok.bos_token_id]) == 0
    for text in TEXTS:
        assert _check_detok(card_tok, table, text) == text


def test_sentencepiece_style_detokenize(sp_tok):
    table = bt.byte_table(sp_tok)
    pieces = sp_tok.convert_ids_to_tokens(sp_tok(TEXTS[1], add_special_tokens=False)
                                          ["input_ids"])
    assert any(p.startswith("<0x") for p in pieces) and any("▁" in p for p in pieces)
    for text in TEXTS:
        ids = sp_tok(text, add_special_tokens=False)["input_ids"]
        ours = _check_detok(sp_tok, table, text)
        assert ours == " " + text  # the prepended "▁" shows as a space in our bytes
        assert ours[1:] == sp_tok.decode(ids)  # transformers strips exactly that space


def test_detokenize_vmaps_over_a_batch(card_tok):
    table = bt.byte_table(card_tok)
    rows = [card_tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    width = max(map(len, rows))
    ids = np.array([r + [0] * (width - len(r)) for r in rows], np.int32)
    lengths = jnp.array([len(r) for r in rows])
    out = jax.jit(jax.vmap(bt.detokenize, in_axes=(None, 0, 0)))(table, ids, lengths)
    for b, text in enumerate(TEXTS):
        assert bytes(np.asarray(out.bytes[b])[:int(out.num_bytes[b])]) == text.encode()
    found = jax.vmap(lambda t: bt.find_bytes(t, b'"action":'))(out)
    assert found.tolist() == [t.encode().find(b'"action":') for t in TEXTS]
