"""Pretraining: a tiny LLaVA that reads the card tasks' pictures, made the way LLaVA is made.

    python -m rlvlm_jax.pretrain --config experiments/pretrain_tiny.py --workdir outputs/reader

RL4VLM starts from a VLM that already reads; a ~1M-parameter model from nothing does not learn to
read through task SFT alone. This stage is LLaVA's captioning stage in miniature: pictures the
environments draw of visited states (half from the oracle with 30% random actions, half from
random play), the prompt "USER: <image>\ndescribe ASSISTANT:" and as answer a caption of the
state's visible facts, built from the env's `text_fields` in the words the task demonstrations
use:

    NumberLine  The current number is 4 and the target number is 3.
    EZPoints    The cards are 2 and 10. The formula is 2 . + 10
    Points24    The cards are 7, K, 9 and 8. The formula is empty
    Blackjack   My cards are A, 6 and 3. The dealer shows 10.

A formula is written slot by slot: a blank slot (an invalid number, drawn as nothing) is "."
where a later token shows the gap, a trailing blank (invisible) is left out. Blackjack's dealer
card is its value (J, Q, K show 10, as `text_fields` has it); the player's total and usable ace
follow from the cards and are left to the task (reading, not arithmetic). Suits are in no text
field and no task needs them.

Objective: the SFT one, `rl.sft.sft_loss` (teacher-forced NLL of the caption tokens), plus an
auxiliary reading head (`train.reading_head`, training only, never exported): per picture region
a linear classifier of what the region shows from the image tokens it overlaps. Measured without
it (captions only, 1000-1500 steps): the cards were read (100%) but the formula never (19-40% of
EZPoints formulas, 7-19% of Points24's; the decoder guessed it from the cards, or always said
"empty" when formulas were random) and Blackjack's dealer card stayed at 34-92%; the same tower
with the head reads every formula slot within 300 steps. Batches are drawn on the device from
stored region variants, so the training set is large without holding its pictures.

One reader serves all tasks: one picture size (the config's, >= Blackjack's 101 px) and one
tower, as one LLaVA serves many tasks; a task run must use that size.

Reading is measured by greedy captions of held-out states (another key; the SFT data's
behaviour, 30% random actions): each fact (a number, a card, the formula, the number of cards)
right or wrong, per task, printed and written to `reading.json`. The workdir is then a
transformers LLaVA directory (`export_hf_checkpoint`: config.json + model.safetensors, and the
tokenizer), so a task config starts from it with
`--config.model.checkpoint=DIR --config.image_size=<the reader's size>`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import rlvlm_jax.envs as envs
from rlvlm_jax.envs.demonstrations import card_name
from rlvlm_jax.envs.prompts import IMAGE_TOKEN
from rlvlm_jax.models import sampling
from rlvlm_jax.rl import optimizer as optim
from rlvlm_jax.rl import policy as policy_lib
from rlvlm_jax.rl import sft as sft_lib
from rlvlm_jax.rl import sft_data
from rlvlm_jax.text.tokenizer import build_card_tokenizer, encode_prompts, load_tokenizer

READING_FILE = "reading.json"
CONFIG_FILE = "pretrain_config.json"  # not config.json: that is the exported model's
READER_VERSION = 1  # part of a cached reader's key: bump when this code changes what it makes
RECIPE_FIELDS = ("tasks", "seed", "prompt", "max_new_tokens", "data", "train", "eval")


# ------------------------------------------------------------------------------------ captions
def _and(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


BLANK_MARK = "."  # a blank formula slot between tokens (one token of the card tokenizer: " .")


def visible_formula(tokens) -> str:
    """The formula as drawn: its tokens separated by spaces, a blank slot (an invalid number,
    drawn as nothing) as "." where a later token shows the gap, trailing blanks (not visible)
    left out. Every caption token is then one slot, in slot order."""
    shown = [str(t) if str(t).strip() else BLANK_MARK for t in tokens]
    while shown and shown[-1] == BLANK_MARK:
        shown.pop()
    return " ".join(shown)


def caption_facts(task: str, fields: dict) -> dict:
    """The facts a caption states, from the env's `text_fields` of one state: flat
    name -> value (card lists become card1, card2, ...)."""
    if task == "NumberLine":
        return {"current": int(fields["position"]), "target": int(fields["goal"])}
    if task in ("EZPoints", "Points24"):
        facts = {f"card{i + 1}": card_name(int(r)) for i, r in enumerate(fields["cards"])}
        facts["formula"] = visible_formula(fields.get("formula") or [])
        return facts
    if task == "Blackjack":
        cards = [int(r) for r in fields["player_cards"]]
        facts = {f"card{i + 1}": card_name(r) for i, r in enumerate(cards)}
        facts.update(num_cards=len(cards), dealer=card_name(int(fields["dealer_up_value"])))
        return facts
    raise ValueError(f"unknown task {task!r}")


def caption_text(task: str, fields: dict) -> str:
    """The caption of one state (see the module docstring)."""
    f = caption_facts(task, fields)
    cards = [v for k, v in f.items() if re.fullmatch(r"card\d+", k)]
    if task == "NumberLine":
        return f"The current number is {f['current']} and the target number is {f['target']}."
    if task in ("EZPoints", "Points24"):
        return f"The cards are {_and(cards)}. The formula is {f['formula'] or 'empty'}"
    return f"My cards are {_and(cards)}. The dealer shows {f['dealer']}."


def _search(pattern: str, text: str):
    m = re.search(pattern, text)
    return m.group(1) if m else None


def _cards(text: str | None) -> list[str]:
    return [] if not text else [c.strip() for c in re.split(r", | and ", text)]


def parse_caption(task: str, text: str) -> dict:
    """The facts a (generated) caption states; a fact it does not state is absent. Each fact is
    looked for on its own, so one garbled part does not void the others."""
    out = {}
    if task == "NumberLine":
        for name, pat in (("current", r"current number is (\d+)"),
                          ("target", r"target number is (\d+)")):
            v = _search(pat, text)
            if v is not None:
                out[name] = int(v)
        return out
    if task in ("EZPoints", "Points24"):
        for i, c in enumerate(_cards(_search(r"The cards are (.+?)\.", text))):
            out[f"card{i + 1}"] = c
        formula = _search(r"The formula is (.*)$", text)
        if formula is not None:
            out["formula"] = "" if formula.strip() == "empty" else formula.strip()
        return out
    if task == "Blackjack":
        cards = _cards(_search(r"My cards are (.+?)\.", text))
        for i, c in enumerate(cards):
            out[f"card{i + 1}"] = c
        if cards:
            out["num_cards"] = len(cards)
        dealer = _search(r"The dealer shows (\S+?)\.", text)
        if dealer is not None:
            out["dealer"] = dealer
        return out
    raise ValueError(f"unknown task {task!r}")


def field_group(name: str) -> str:
    """card1, card2, ... -> cards; other facts are their own group."""
    return "cards" if re.fullmatch(r"card\d+", name) else name


def score_reading(task: str, truths: list[dict], texts: list[str]) -> dict:
    """Field-level reading accuracy of generated captions against the true facts: each true fact
    right or wrong (`field_accuracy`), per group of facts (`fields`), and whole captions whose
    facts are exactly the truth (`caption_accuracy`)."""
    right, total, exact = 0, 0, 0
    groups: dict[str, list[int]] = {}
    for truth, text in zip(truths, texts, strict=True):
        got = parse_caption(task, text)
        exact += got == truth
        for name, value in truth.items():
            ok = int(got.get(name) == value)
            right += ok
            total += 1
            groups.setdefault(field_group(name), [0, 0])
            groups[field_group(name)][0] += ok
            groups[field_group(name)][1] += 1
    n = max(len(truths), 1)
    return {"field_accuracy": right / max(total, 1), "caption_accuracy": exact / n,
            "fields": {g: r / t for g, (r, t) in groups.items()}, "states": len(truths)}


# ------------------------------------------------------------------------------------ data
class TaskData(NamedTuple):
    """Captioned states of one task: what each picture region shows (ints, drawn into pictures
    on the device) and the caption ids."""

    variants: dict  # region name -> int32 [N]
    response: jax.Array  # int32 [N, R] caption ids + EOS, right-padded
    response_mask: jax.Array  # int32 [N, R]


def prompt_text(prompt: str) -> str:
    """The captioning prompt in the short template's frame (`USER: <image>\\n... ASSISTANT:`)."""
    return f"USER: {IMAGE_TOKEN}\n{prompt} ASSISTANT:"


def encode_prompt(tokenizer, prompt: str, num_image_tokens: int) -> tuple[np.ndarray, ...]:
    """(ids, mask) int32 [P] of the captioning prompt, `<image>` expanded, unpadded."""
    text = prompt_text(prompt)
    length = len(tokenizer(text)["input_ids"]) - 1 + num_image_tokens
    ids, mask = encode_prompts(tokenizer, [text], num_image_tokens, length)
    return ids[0], mask[0]


def task_fields(env, states) -> list[dict]:
    """`env.text_fields` of every state of a batch (one transfer, the pictures left behind)."""
    return env.text_fields_batch(states)


def encode_captions(tokenizer, texts: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Caption ids without BOS, ended with EOS, right-padded to `length` (raises if too long)."""
    pad = tokenizer.pad_token_id or 0
    ids = np.full((len(texts), length), pad, np.int32)
    mask = np.zeros_like(ids)
    for i, toks in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"]):
        toks = list(toks) + [tokenizer.eos_token_id]
        if len(toks) > length:
            raise ValueError(f"caption {texts[i]!r} is {len(toks)} tokens with EOS; "
                             f"max_new_tokens is {length}")
        ids[i, : len(toks)] = toks
        mask[i, : len(toks)] = 1
    return ids, mask


def make_task_data(env, num: int, key, explore) -> tuple[dict, list[str]]:
    """(region variants, captions) of `num` visited states of `env`, in equal parts from
    behaviour policies with each random-action share in `explore` (a float or a sequence)."""
    shares = [float(explore)] if np.ndim(explore) == 0 else [float(e) for e in explore]
    parts = [num // len(shares) + (i < num % len(shares)) for i in range(len(shares))]
    variants, texts = [], []
    # The picture's regions only (a formula env also names its formula line, for the original
    # picture style's text run).
    names = tuple(r.name for r in env.picture.regions)
    picture_variants = jax.jit(jax.vmap(lambda s: {k: env.region_variants(s)[k] for k in names}))
    for i, (share, n) in enumerate(zip(shares, parts, strict=True)):
        states = sft_data.visited_states(env, n, jax.random.fold_in(key, i), share)
        texts += [caption_text(env.task, f) for f in task_fields(env, states)]
        variants.append(picture_variants(states))
    return {k: jnp.concatenate([jnp.asarray(v[k], jnp.int32) for v in variants])
            for k in variants[0]}, texts


def caption_length(tokenizer, texts: list[str], limit: int) -> int:
    """Tokens (EOS included) of the longest caption, rounded up to a multiple of 8, at most
    `limit` (training pads every caption to this, not to max_new_tokens)."""
    longest = max(len(t) for t in tokenizer(texts, add_special_tokens=False)["input_ids"]) + 1
    return min(limit, -(-longest // 8) * 8)


def held_out(env, num: int, key, explore: float):
    """(pictures uint8 [N, S, S, 3], true facts, captions) of `num` states drawn with `key`,
    shuffled (visited states come step by step: the first are all fresh resets), so that any
    prefix is a fair sample."""
    states = sft_data.visited_states(env, num, key, explore)
    fields = task_fields(env, states)
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), num))
    frames = np.asarray(states.canvas)[order]
    fields = [fields[i] for i in order]
    return (frames, [caption_facts(env.task, f) for f in fields],
            [caption_text(env.task, f) for f in fields])


def split_batch(batch_size: int, weights) -> tuple[int, ...]:
    """Per-task batch sizes proportional to `weights`, summing to `batch_size`, each >= 1."""
    w = np.asarray(weights, float)
    if w.ndim != 1 or not len(w) or (w <= 0).any():
        raise ValueError(f"data.weights must be positive, one per task, got {list(weights)}")
    if batch_size < len(w):
        raise ValueError(f"train.batch_size {batch_size} is smaller than the number of tasks")
    sizes = np.maximum(1, np.floor(batch_size * w / w.sum())).astype(int)
    while sizes.sum() < batch_size:
        sizes[np.argmax(batch_size * w / w.sum() - sizes)] += 1
    while sizes.sum() > batch_size:
        sizes[np.argmax(sizes)] -= 1
    return tuple(int(s) for s in sizes)


# ------------------------------------------------------------------------------------ reading head
def region_classes(env) -> dict[str, np.ndarray]:
    """Picture region name -> int [K]: each variant's class, the first variant drawing the same
    tile (a blank formula slot looks like an empty one: one class)."""
    out = {}
    for r in env.picture.regions:
        flat = r.tiles.reshape(r.tiles.shape[0], -1)
        _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
        out[r.name] = first[inverse.reshape(-1)].astype(np.int32)
    return out


def region_patches(env, patch_size: int) -> list[np.ndarray]:
    """Per picture region, the image tokens (patches, row-major) it overlaps."""
    grid = env.image_size // patch_size
    out = []
    for r in env.picture.regions:
        h, w = r.tiles.shape[1:3]
        ys = range(r.y // patch_size, (r.y + h - 1) // patch_size + 1)
        xs = range(r.x // patch_size, (r.x + w - 1) // patch_size + 1)
        out.append(np.asarray([i * grid + j for i in ys for j in xs], np.int32))
    return out


def init_reading_head(task_envs, patch_size: int, width: int, key) -> dict:
    """Auxiliary reading head (training only, never exported): per task and picture region, a
    linear classifier of the region's variant (the card, digit or formula token it shows) from
    the projected features of the image tokens the region overlaps. It asks the tower to put what
    each region shows into that region's own tokens, which the caption loss alone did not do."""
    head = {}
    for t, env in enumerate(task_envs):
        classes = region_classes(env).values()
        patches = region_patches(env, patch_size)
        keys = jax.random.split(jax.random.fold_in(key, t), len(patches))
        head[env.task] = [
            {"w": jax.random.normal(k, (len(p) * width, len(c))) / np.sqrt(len(p) * width),
             "b": jnp.zeros((len(c),), jnp.float32)}
            for k, p, c in zip(keys, patches, classes, strict=True)]
    return head


def reading_head_logits(head, features, env, patch_size: int) -> list[jax.Array]:
    """Per region (B, K_r) class logits from the projected image features (B, T, D)."""
    feats = features.astype(jnp.float32)
    out = []
    for h, p in zip(head, region_patches(env, patch_size), strict=True):
        x = feats[:, jnp.asarray(p)].reshape(feats.shape[0], -1)
        out.append(x @ h["w"] + h["b"])
    return out


def region_labels(variants: dict, env) -> list[jax.Array]:
    """Per region (B,) class (see `region_classes`) of the drawn variants."""
    return [jnp.asarray(c)[variants[name]] for name, c in region_classes(env).items()]


def reading_head_loss(head, features, variants: dict, env, patch_size: int) -> jax.Array:
    """Mean cross-entropy of the head's region classes against the drawn variants."""
    losses = []
    for logits, labels in zip(reading_head_logits(head, features, env, patch_size),
                              region_labels(variants, env), strict=True):
        logp = jax.nn.log_softmax(logits, axis=-1)
        losses.append(-jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1)))
    return sum(losses) / len(losses)


# ------------------------------------------------------------------------------------ compiled
def make_step(policy, tx, task_envs, sizes, prompt_ids, prompt_mask, head_weight: float = 0.0,
              compiler_options=None):
    """Jitted `step(params, opt_state, data, key) -> (params, opt_state, metrics)`: draws
    `sizes[t]` states of each task, draws their pictures and takes one SFT step on the captions
    (`rl.sft.sft_loss`), plus `head_weight` times the reading head's loss when params carry one
    (params["head"]). `data` is a tuple of TaskData (on the device); params and opt_state are
    donated."""
    ids = jnp.asarray(prompt_ids)[None]
    mask = jnp.asarray(prompt_mask)[None]
    renders = [jax.vmap(env.picture.render) for env in task_envs]

    def loss_fn(params, batch, picked):
        loss, metrics = sft_lib.sft_loss(policy, params, batch)
        if head_weight > 0:
            features = policy.model(params).image_features(policy.preprocess(batch.frames))
            head, lo = [], 0
            for env, n, variants in zip(task_envs, sizes, picked, strict=True):
                head.append(reading_head_loss(params["head"][env.task], features[lo: lo + n],
                                              variants, env, policy.cfg.vision.patch_size))
                lo += n
            metrics["head_loss"] = sum(head) / len(head)
            loss = loss + head_weight * metrics["head_loss"]
        return loss, metrics

    def step(params, opt_state, data, key):
        frames, resp, rmask, picked = [], [], [], []
        for t, (d, n, render) in enumerate(zip(data, sizes, renders, strict=True)):
            idx = jax.random.randint(jax.random.fold_in(key, t), (n,), 0,
                                     d.response.shape[0])
            picked.append({k: v[idx] for k, v in d.variants.items()})
            frames.append(render(picked[-1]))
            resp.append(d.response[idx])
            rmask.append(d.response_mask[idx])
        b = sum(sizes)
        zeros = jnp.zeros((b,), jnp.int32)
        batch = sft_lib.SFTData(jnp.concatenate(frames), jnp.repeat(ids, b, 0),
                                jnp.repeat(mask, b, 0), jnp.concatenate(resp),
                                jnp.concatenate(rmask), zeros, zeros)
        (_, metrics), grads = jax.value_and_grad(
            lambda p: loss_fn(p, batch, picked), has_aux=True)(params)
        metrics["grad_norm"] = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    return jax.jit(step, donate_argnums=(0, 1), compiler_options=compiler_options)


def make_captioner(policy, tokenizer, max_new_tokens: int, compiler_options=None):
    """Jitted greedy `caption(params, frames, ids, mask) -> (tokens, lengths)`."""
    cfg = sampling.SamplingConfig(max_new_tokens=max_new_tokens,
                                  pad_id=tokenizer.pad_token_id or 0,
                                  eos_ids=(policy.cfg.eos_token_id,))

    def caption(params, frames, ids, mask):
        knobs = sampling.make_knobs(0.0, eos_ids=cfg.eos_ids)
        out, _ = sampling.generate(policy.model(params), ids, mask, policy.preprocess(frames),
                                   jax.random.key(0), knobs, cfg=cfg)
        return out.tokens, out.lengths

    return jax.jit(caption, compiler_options=compiler_options)


def generate_captions(caption, params, frames: np.ndarray, prompt_ids, prompt_mask, tokenizer,
                      batch: int) -> list[str]:
    """Greedy captions of `frames`, `batch` at a time (the last chunk padded: one shape)."""
    n = frames.shape[0]
    ids = np.repeat(np.asarray(prompt_ids)[None], batch, 0)
    mask = np.repeat(np.asarray(prompt_mask)[None], batch, 0)
    texts = []
    for lo in range(0, n, batch):
        chunk = frames[lo: lo + batch]
        keep = chunk.shape[0]
        if keep < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - keep, 0)])
        toks, lens = jax.device_get(caption(params, chunk, ids, mask))
        texts += [tokenizer.decode(t[:k], skip_special_tokens=True)
                  for t, k in zip(toks[:keep], lens[:keep], strict=True)]
    return texts


def evaluate_reading(caption, params, sets: dict, prompt_ids, prompt_mask, tokenizer,
                     batch: int, limit: int | None = None) -> dict:
    """Field-level reading accuracy per task on held-out `sets` (task -> (frames, facts, ...)),
    one pass over all tasks' pictures; `limit` states per task (None: all)."""
    names = list(sets)
    frames = np.concatenate([sets[t][0][:limit] for t in names])
    texts = generate_captions(caption, params, frames, prompt_ids, prompt_mask, tokenizer, batch)
    out, lo = {}, 0
    for t in names:
        truths = sets[t][1][:limit]
        out[t] = score_reading(t, truths, texts[lo: lo + len(truths)])
        out[t]["sample"] = texts[lo]
        lo += len(truths)
    return out


# ------------------------------------------------------------------------------------ export
def export_reader(params: dict, cfg, tokenizer, directory: str) -> None:
    """`directory` becomes a transformers LLaVA directory a task config can start from
    (`--config.model.checkpoint=directory`): config.json, model.safetensors, the tokenizer."""
    from rlvlm_jax.models.conversion import export_hf_checkpoint

    export_hf_checkpoint(params["vlm"], cfg, directory)
    tokenizer.save_pretrained(directory)


# ------------------------------------------------------------------------------------ the run
def task_list(config) -> list[str]:
    names = [t.strip() for t in str(config.tasks).split(",") if t.strip()]
    if not names:
        raise ValueError("config.tasks names no task")
    for t in names:
        if t not in envs.TASKS:
            raise ValueError(f"config.tasks: unknown task {t!r}; known: {list(envs.TASKS)}")
        smallest = envs.TASKS[t].min_image_size()
        if config.image_size < smallest:
            raise ValueError(f"config.image_size {config.image_size} is below {t}'s smallest "
                             f"legible picture ({smallest} px)")
    if config.image_size % config.model.patch_size:
        raise ValueError(f"config.image_size {config.image_size} is not a multiple of "
                         f"config.model.patch_size {config.model.patch_size}")
    return names


def _print(line: str) -> None:
    print(line, flush=True)


def pretrain(config, workdir: str, log=_print) -> dict:
    """Trains the reader, evaluates its reading, exports it into `workdir`; returns the
    reading results (also in `workdir/reading.json`)."""
    c = config
    names = task_list(c)
    weights = [float(w) for w in str(c.data.weights).split(",")]
    if len(weights) < len(names):
        raise ValueError(f"config.data.weights {c.data.weights!r} has fewer weights than "
                         f"config.tasks has tasks ({len(names)})")
    sizes = split_batch(c.train.batch_size, weights[: len(names)])
    os.makedirs(workdir, exist_ok=True)
    t_start = time.time()
    if c.tokenizer.path:
        tokenizer = load_tokenizer(c.tokenizer.path)
    else:
        build_card_tokenizer(workdir, c.tokenizer.vocab_size)
        tokenizer = load_tokenizer(workdir)
    cfg = policy_lib.llava_config(c.model, c.image_size, tokenizer)
    policy, params = policy_lib.init_policy(cfg, c.model)
    params = {"vlm": params["vlm"]}  # no value head: nothing here trains or exports one
    xla = {"xla_backend_optimization_level": 0} if c.fast_compile else None
    prompt_ids, prompt_mask = encode_prompt(tokenizer, c.prompt, cfg.num_image_tokens)

    key = jax.random.key(c.seed)
    k_data, k_held, k_steps = jax.random.split(key, 3)
    task_envs, raw, sets, seen = [], [], {}, {}
    for i, t in enumerate(names):
        env, _ = envs.make(t, image_size=c.image_size)
        task_envs.append(env)
        raw.append(make_task_data(env, c.data.states_per_task, jax.random.fold_in(k_data, i),
                                  [float(e) for e in str(c.data.explore).split(",")]))
        sets[t] = held_out(env, c.eval.states_per_task, jax.random.fold_in(k_held, i),
                           c.eval.explore)
        train_texts = set(raw[-1][1])
        seen[t] = float(np.mean([x in train_texts for x in sets[t][2]]))
    length = caption_length(tokenizer, [x for _, texts in raw for x in texts], c.max_new_tokens)
    data = []
    for variants, texts in raw:
        ids, mask = encode_captions(tokenizer, texts, length)
        data.append(TaskData(variants, jnp.asarray(ids), jnp.asarray(mask)))
    data = tuple(data)
    log(f"[pretrain] {policy_lib.count_params(params['vlm']):,} params, tasks {names}, "
        f"{c.data.states_per_task} states each (batch {dict(zip(names, sizes, strict=True))}), "
        f"{cfg.num_image_tokens} image tokens, captions <= {length} tokens, data "
        f"{time.time() - t_start:.1f}s")

    if c.train.reading_head > 0:
        params["head"] = init_reading_head(task_envs, cfg.vision.patch_size,
                                           cfg.text.hidden_size, jax.random.fold_in(key, 7))
    schedule = optim.warmup_cosine(c.train.lr, c.train.steps, c.train.warmup)
    tx = optim.make_optimizer(schedule, c.train.weight_decay, c.train.grad_clip, params)
    opt_state = tx.init(params)
    step = make_step(policy, tx, task_envs, sizes, prompt_ids, prompt_mask,
                     c.train.reading_head, xla)
    caption = make_captioner(policy, tokenizer, c.max_new_tokens, xla)

    history, t0 = [], time.time()
    for i in range(c.train.steps):
        params, opt_state, metrics = step(params, opt_state, data, jax.random.fold_in(k_steps, i))
        done = i + 1
        quick_check = bool(c.train.eval_every) and done % c.train.eval_every == 0
        if done % c.train.log_every == 0 or quick_check or done == c.train.steps:
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            record = {"step": done, **m, "time": time.time() - t0}
            if quick_check and done < c.train.steps:
                quick = evaluate_reading(caption, params, sets, prompt_ids, prompt_mask,
                                         tokenizer, c.eval.batch_size, c.train.eval_quick)
                record["reading"] = {t: round(r["field_accuracy"], 4) for t, r in quick.items()}
            history.append(record)
            head = f" head {m['head_loss']:.4f}" if "head_loss" in m else ""
            log(f"[pretrain] step {done}: loss {m['loss']:.4f}{head} grad {m['grad_norm']:.3f} "
                f"{record['time']:.0f}s" + (f" reading {record['reading']}"
                                            if "reading" in record else ""))
    train_seconds = time.time() - t0

    t1 = time.time()
    reading = evaluate_reading(caption, params, sets, prompt_ids, prompt_mask, tokenizer,
                               c.eval.batch_size)
    for t, r in reading.items():
        r["held_out_seen_in_training"] = seen[t]
        groups = json.dumps({k: round(v, 4) for k, v in r["fields"].items()})
        log(f"[reading] {t}: fields {r['field_accuracy']:.4f} captions "
            f"{r['caption_accuracy']:.4f} {groups} "
            f"(held-out captions also in training: {seen[t]:.0%}) e.g. {r['sample']!r}")
    export_reader(params, cfg, tokenizer, workdir)
    results = {
        "reading": reading,
        "min_field_accuracy": min(r["field_accuracy"] for r in reading.values()),
        "steps": c.train.steps, "batch_size": c.train.batch_size, "train_seconds": train_seconds,
        "eval_seconds": time.time() - t1, "total_seconds": time.time() - t_start,
        "image_size": c.image_size, "num_image_tokens": cfg.num_image_tokens,
        "params": policy_lib.count_params(params["vlm"]), "history": history,
    }
    with open(os.path.join(workdir, READING_FILE), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(c.to_json_best_effort(indent=1))
    log(f"[pretrain] min field accuracy {results['min_field_accuracy']:.4f}; train "
        f"{train_seconds:.0f}s, total {results['total_seconds']:.0f}s; wrote {workdir} "
        f"(start a task from it: --config.model.checkpoint={workdir} "
        f"--config.image_size={c.image_size})")
    return results


# ------------------------------------------------------------------------------------ cached
def reader_config(task_config) -> ml_collections.ConfigDict:
    """The pretraining config of a task config's `pretrain` recipe: the recipe's fields plus the
    task's tokenizer, model and picture size, so the reader has exactly the architecture the
    task run builds. The reader's initialisation follows the recipe's seed, not the task's, so
    every seed of a task (and every task) shares one reader."""
    recipe = task_config.pretrain
    c = ml_collections.ConfigDict()
    for name in RECIPE_FIELDS:
        value = recipe[name]
        c[name] = ml_collections.ConfigDict(value.to_dict()) \
            if isinstance(value, ml_collections.ConfigDict) else value
    c.image_size = task_config.image_size
    c.tokenizer = ml_collections.ConfigDict(task_config.tokenizer.to_dict())
    model = task_config.model.to_dict()
    # A reader is always a LLaVA (Qwen runs refuse the recipe); the default family is left out
    # of the recipe so readers cached before the field existed keep their name.
    if model.get("family", "llava") == "llava":
        model.pop("family", None)
    c.model = ml_collections.ConfigDict(model)
    c.model.checkpoint = ""
    c.model.init_seed = recipe.seed
    c.fast_compile = task_config.fast_compile
    return c


def cache_root() -> str:
    """Where built readers are kept: $RLVLM_CACHE, else ~/.cache/rlvlm_jax."""
    return os.environ.get("RLVLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "rlvlm_jax")


def reader_path(task_config) -> str:
    """The cache directory of the reader a task config's recipe makes: named by a hash of the
    whole pretraining config and READER_VERSION, so any change to either makes a new one."""
    c = reader_config(task_config)
    text = json.dumps({"version": READER_VERSION, "config": c.to_dict()}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return os.path.join(cache_root(), "readers", f"reader-{c.image_size}px-{digest}")


def ensure_reader(task_config, log=_print) -> str:
    """The path of the task config's reader, pretrained first if the cache does not hold it.

    Built in a private directory and renamed into place, so an interrupted build leaves no
    reader that looks complete, and of two processes building the same one, one copy stays."""
    path = reader_path(task_config)
    if os.path.isfile(os.path.join(path, READING_FILE)):
        log(f"[pretrain] reusing the reader {path}")
        return path
    log(f"[pretrain] building the reader {path} (first use of this recipe; reused afterwards)")
    partial = f"{path}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        pretrain(reader_config(task_config), partial, log)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        os.rename(partial, path)
    except OSError:  # another process finished the same reader first: keep one copy
        if not os.path.isfile(os.path.join(path, READING_FILE)):
            raise
        shutil.rmtree(partial, ignore_errors=True)
    log(f"[pretrain] the reader is {path}")
    return path


def main(argv) -> int:
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        pretrain(_CONFIG.value, _WORKDIR.value)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # flags only here: train.py defines the same names at import
    from absl import app, flags
    from ml_collections import config_flags

    from rlvlm_jax.config_files import parse_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "pretraining config file",
                                              lock_config=True)
    _WORKDIR = flags.DEFINE_string("workdir", None, "output directory: becomes the reader's "
                                   "transformers LLaVA directory")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
