"""Prompt token ids built on the device from the env state, equal to the host's.

A prompt is a fixed list of token segments with the current formula spliced in (EZPoints/Points24
show it, twice with CoT): the template is rendered on the host with a sentinel in place of the
formula, split there, and each segment tokenised once; each formula token code (1..10, + - * / ( ),
blank) maps to its own token ids through a small table. So the ids are a concatenation of
separately tokenised pieces, not the BPE of the joined string; SFT encodes prompts through the
same `PromptEncoder`, so training and acting agree, and for prompts without a formula the ids
equal `tokenizer.encode_prompts` exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rlvlm_jax.envs import formula as F
from rlvlm_jax.envs import prompts
from rlvlm_jax.envs.tasks import get_task

TEMPLATES = ("llava_v1", "short")
_SENTINEL = "\x00"


def prompt_text(task: str, formula_tokens, cot: bool, template: str, chat: str = "llava") -> str:
    """The text of one step's prompt (the image placeholder not yet expanded).

    "llava_v1": the original prompt, byte for byte (LLaVA system + task prompt); with
    `chat="qwen"` the original task prompt in Qwen's chat template (system turn included).
    "short": the task name (and the formula for the formula tasks) only, for tiny CPU models,
    whose prompts would otherwise be ~150 constant tokens that cost most of the compute.
    """
    if template == "llava_v1":
        if chat == "llava":
            return prompts.full_prompt(task, formula_tokens, cot)
        return prompts.conversation(prompts.task_prompt(task, formula_tokens, cot), chat)
    if template == "short":
        spec = get_task(task)
        body = spec.name + (" json with thoughts" if cot else " json")
        if spec.has_formula:
            body += " formula: " + prompts.formula_text(formula_tokens)
        return prompts.conversation(body, chat, system=False)
    raise ValueError(f"unknown prompt template {template!r}; known: {TEMPLATES}")


class PromptEncoder:
    """Prompt token ids for a task, built on the host (`host`) or the device (`device`), equal.

    `length` is the padded prompt length P (0: the longest possible prompt). Ids are left-padded.
    `chat`: the model's conversation style (`envs.prompts.CHATS`), which also names the image
    placeholder that is expanded to `num_image_tokens` ids.
    """

    def __init__(self, tokenizer, task: str, cot: bool, template: str, num_image_tokens: int,
                 length: int = 0, max_formula: int = 0, chat: str = "llava"):
        spec = get_task(task)
        self.task, self.cot, self.template, self.chat = task, cot, template, chat
        self.has_formula = spec.has_formula
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.num_image_tokens = num_image_tokens
        self.image_token = prompts.image_token(chat)
        image_id = tokenizer.convert_tokens_to_ids(self.image_token)
        text = prompt_text(task, [_SENTINEL] if spec.has_formula else None, cot, template, chat)
        pieces = text.split(_SENTINEL)
        self.segments = []
        for i, piece in enumerate(pieces):
            ids = tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
            if i == 0 and tokenizer.bos_token_id is not None:
                ids = [tokenizer.bos_token_id] + ids
            row = []
            for t in ids:
                row.extend([t] * num_image_tokens if t == image_id else [t])
            self.segments.append(np.asarray(row, np.int32))
        self.num_slots = len(pieces) - 1
        code_ids = [[]] + [
            tokenizer(F.CODE_TEXT[c], add_special_tokens=False)["input_ids"]
            for c in range(1, F.NUM_CODES)
        ]
        width = max(1, max(len(x) for x in code_ids))
        self.code_table = np.zeros((F.NUM_CODES, width), np.int32)
        self.code_len = np.asarray([len(x) for x in code_ids], np.int32)
        for c, ids in enumerate(code_ids):
            self.code_table[c, : len(ids)] = ids
        self.max_formula = max_formula if self.num_slots else 0
        longest = sum(map(len, self.segments)) + self.num_slots * self.max_formula * width
        self.length = length or longest
        if longest > self.length:
            raise ValueError(f"prompts need up to {longest} tokens; prompt length is {self.length}")

    def host(self, formula_codes=()) -> tuple[np.ndarray, np.ndarray]:
        """(ids, mask) int32 [P] for a formula given as token codes."""
        codes = [int(c) for c in formula_codes if int(c) != F.PAD] if self.num_slots else []
        if len(codes) > self.max_formula:
            raise ValueError(
                f"formula of {len(codes)} tokens; the encoder holds {self.max_formula}"
            )
        formula = [t for c in codes for t in self.code_table[c, : self.code_len[c]]]
        row = []
        for i, seg in enumerate(self.segments):
            row += seg.tolist() + (formula if i < self.num_slots else [])
        ids = np.full(self.length, self.pad_id, np.int32)
        mask = np.zeros(self.length, np.int32)
        ids[self.length - len(row) :] = row
        mask[self.length - len(row) :] = 1
        return ids, mask

    def device(self, formula: jax.Array, num_codes: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Jittable (ids, mask) [P] from a formula of token codes [F] with `num_codes` in use."""
        cap = sum(map(len, self.segments)) + self.num_slots * self.max_formula * (
            self.code_table.shape[1]
        )
        buf = jnp.zeros((cap,), jnp.int32)
        off = jnp.int32(0)
        if self.num_slots:
            formula = jnp.asarray(formula, jnp.int32)[: self.max_formula]
            live = jnp.arange(formula.shape[0]) < num_codes
            lens = jnp.where(live, jnp.asarray(self.code_len)[formula], 0)
            toks = jnp.asarray(self.code_table)[formula]  # [F, W]
            rel = (jnp.cumsum(lens) - lens)[:, None] + jnp.arange(toks.shape[1])[None]
            ok = jnp.arange(toks.shape[1])[None] < lens[:, None]
        for i, seg in enumerate(self.segments):
            if len(seg):
                buf = jax.lax.dynamic_update_slice(buf, jnp.asarray(seg), (off,))
                off = off + len(seg)
            if i < self.num_slots:
                buf = buf.at[jnp.where(ok, off + rel, cap)].set(toks, mode="drop")
                off = off + jnp.sum(lens)
        src = jnp.arange(self.length) - (self.length - off)
        mask = src >= 0
        ids = jnp.where(mask, buf[jnp.clip(src, 0, cap - 1)], self.pad_id)
        return ids.astype(jnp.int32), mask.astype(jnp.int32)


def formula_of(state, batch: int):
    """(codes [B, F], lengths [B]) of formula-task states; a dummy for the other tasks."""
    if hasattr(state, "formula"):
        return state.formula, state.length
    return jnp.zeros((batch, 1), jnp.int32), jnp.zeros((batch,), jnp.int32)
