"""Tokenizers: load any transformers tokenizer from a local directory, build the project's tiny
card-task tokenizer, and encode LLaVA prompts into left-padded ids with the image placeholders
expanded (static shapes for the compiled model).

    python -m rlvlm_jax.text.tokenizer build OUT_DIR [--vocab-size 2048]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from collections.abc import Iterable, Sequence

import jax
import numpy as np
from etils import epath

from rlvlm_jax.envs import prompts
from rlvlm_jax.envs.prompts import IMAGE_TOKEN

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN)  # ids 0..4 in the card tokenizer


def load_tokenizer(path: str):
    """AutoTokenizer from a local directory only (never the hub); left padding for generation."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory {path!r} does not exist")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def card_task_corpus(num_states: int = 300, seed: int = 0) -> list[str]:
    """Prompts and chain-of-thought demonstrations of the four card tasks (the text the policy
    reads and writes), over random states."""
    from rlvlm_jax.envs import demonstrations, prompts
    from rlvlm_jax.envs.tasks import TASK_NAMES

    rng = random.Random(seed)
    texts = []
    for name in TASK_NAMES:
        texts += [prompts.full_prompt(name, None, cot) for cot in (True, False)]

    def demo(task, **state):
        try:
            texts.append(demonstrations.cot_demonstration(task, **state))
        except ValueError:  # a state the task never reaches (e.g. already at the goal)
            pass

    for _ in range(num_states):
        demo("NumberLine", position=rng.randint(0, 5), goal=rng.randint(0, 5))
        total = rng.randint(4, 21)
        demo("Blackjack", player_sum=total, usable_ace=total >= 12 and rng.random() < 0.3,
             dealer_up_value=rng.randint(1, 10))
        for name, n, ops in (("EZPoints", 2, "+*"), ("Points24", 4, "+-*/()")):
            formula = [rng.choice([str(rng.randint(1, 10)), rng.choice(ops)])
                       for _ in range(rng.randint(0, 3))]
            texts.append(prompts.full_prompt(name, formula, True))
            demo(name, cards=[rng.randint(1, 13) for _ in range(n)], formula=formula)
    return texts


def build_card_tokenizer(out_dir: str, vocab_size: int = 2048,
                         corpus: Iterable[str] | None = None, chat: str = "llava"):
    """Train a byte-level BPE on the card-task corpus and save it as a transformers tokenizer.

    Ids: <pad> 0, <s> 1, </s> 2, <unk> 3, <image> 4, then the 256 byte symbols and merges, at
    most `vocab_size` in all (the templated corpus saturates near 1.3k; a model's vocabulary may
    be larger, as LLaVA's is). Byte-level, so any text encodes and every token maps to exact
    bytes. `<s>` is prepended like LLaMA's tokenizer does.

    `chat="qwen"` (tiny Qwen2-VL models) appends Qwen's special tokens (`prompts.QWEN_SPECIALS`,
    after the merges, so every other id is the LLaVA card tokenizer's) and makes <|endoftext|>
    the pad and <|im_end|> the EOS, as in Qwen's own tokenizer; the rest (and `<s>`, harmless
    text to a model trained from scratch) is unchanged.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(card_task_corpus() if corpus is None else corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>",
                                   extra_special_tokens={"image_token": IMAGE_TOKEN},
                                   padding_side="left")
    if chat == "qwen":
        fast.add_special_tokens({"additional_special_tokens": list(prompts.QWEN_SPECIALS)})
        fast.pad_token, fast.eos_token = "<|endoftext|>", "<|im_end|>"
    elif chat != "llava":
        raise ValueError(f"unknown conversation style {chat!r}; known: {prompts.CHATS}")
    fast.save_pretrained(out_dir)
    return fast


def model_token_ids(tokenizer, chat: str = "llava") -> dict[str, int]:
    """Model config fields a tokenizer fixes: `dataclasses.replace(cfg, **model_token_ids(t))`
    (LlavaConfig; with `chat="qwen"` QwenVLConfig's, video and vision start/end included)."""
    ids = {"image_token_id": tokenizer.convert_tokens_to_ids(prompts.image_token(chat)),
           "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if chat == "qwen":
        get = tokenizer.convert_tokens_to_ids
        ids.update(video_token_id=get(prompts.QWEN_VIDEO_TOKEN),
                   vision_start_token_id=get("<|vision_start|>"),
                   vision_end_token_id=get("<|vision_end|>"))
    return ids


def prompt_ids(tokenizer, text: str, num_image_tokens: int,
               image_token: str = IMAGE_TOKEN) -> list[int]:
    """A prompt's ids with its `<image>` expanded to `num_image_tokens` placeholder ids."""
    image_id = tokenizer.convert_tokens_to_ids(image_token)
    row = []
    for t in tokenizer(text)["input_ids"]:
        row.extend([t] * num_image_tokens if t == image_id else [t])
    return row


def encode_prompts(tokenizer, texts: Sequence[str], num_image_tokens: int, length: int,
                   image_token: str = IMAGE_TOKEN) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded (ids, mask) int32 of shape (B, length), each `<image>` expanded to
    `num_image_tokens` placeholder ids. Raises if a prompt does not fit (before compiling)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = np.full((len(texts), length), pad_id, np.int32)
    mask = np.zeros((len(texts), length), np.int32)
    for b, text in enumerate(texts):
        row = prompt_ids(tokenizer, text, num_image_tokens, image_token)
        if len(row) > length:
            raise ValueError(f"prompt {b} is {len(row)} tokens (image expanded), longer than "
                             f"the padded length {length}")
        ids[b, length - len(row):] = row
        mask[b, length - len(row):] = 1
    return ids, mask


def get_tokenizer(section, workdir: str | None, checkpoint: str = "", chat: str = "llava"):
    """The configured tokenizer directory, else the pretrained checkpoint's, else the card
    tokenizer (with `chat="qwen"` Qwen's special tokens added), built once and kept in
    `<workdir>/tokenizer`.

    Multi-host: every process builds the card tokenizer into a local temporary directory (the
    build is deterministic) and only process 0 copies it into the workdir, atomically for a
    local path; a gs:// workdir is never read by transformers, only compared on resume.
    """
    path = section.path or checkpoint
    if path:
        return load_tokenizer(path)
    if workdir is None:
        raise ValueError("config.tokenizer.path is empty and there is no workdir to build in")
    saved = epath.Path(workdir) / "tokenizer"
    remote = "://" in str(workdir)
    if not remote and (saved / "tokenizer.json").exists():
        return load_tokenizer(str(saved))
    with tempfile.TemporaryDirectory(prefix="card_tokenizer_") as tmpdir:
        local = epath.Path(tmpdir)
        build_card_tokenizer(str(local), section.vocab_size, chat=chat)
        if (saved / "tokenizer.json").exists():
            if (saved / "tokenizer.json").read_text() != (local / "tokenizer.json").read_text():
                raise ValueError(f"{saved} differs from the card tokenizer this version builds; "
                                 "resume with the version that started the run or a new "
                                 "--workdir")
        elif jax.process_index() == 0:
            tmp = epath.Path(f"{saved}.tmp{os.getpid()}")
            tmp.mkdir(parents=True, exist_ok=True)
            for f in local.iterdir():
                f.copy(tmp / f.name, overwrite=True)
            tmp.rename(saved)
        return load_tokenizer(str(local))  # read into memory: the directory may go



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlvlm_jax.text.tokenizer",
                                 description="Build the card-task tokenizer.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train and save the tiny card-task tokenizer")
    b.add_argument("out_dir")
    b.add_argument("--vocab-size", type=int, default=2048)
    args = ap.parse_args(argv)
    tok = build_card_tokenizer(args.out_dir, args.vocab_size)
    print(f"wrote {args.out_dir}: {len(tok)} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
