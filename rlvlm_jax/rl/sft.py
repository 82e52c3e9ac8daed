"""Supervised warm start: cross-entropy on the response tokens of oracle demonstrations.

The whole encoded dataset lives on the device; each compiled step gathers its batch by index, so
the host loop only draws indices. Prompts are encoded with the rollout's `PromptEncoder`, so the
policy is trained on exactly the ids it will later act on. Reading is measured separately from
acting: with a share of deliberately wrong demonstrations the action accuracy of a good reader
stays near 1 - wrong_share, while `fact_accuracy` (the response agrees with the truth up to the
end of the first sentence of its thoughts, where the picture has been read out) should reach 1.
"""

from __future__ import annotations

import re
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlvlm_jax.distributed import to_host
from rlvlm_jax.envs import demonstrations
from rlvlm_jax.envs.formula import TEXT_CODE
from rlvlm_jax.envs.tasks import Task
from rlvlm_jax.models import sampling, scoring
from rlvlm_jax.rl import sft_data
from rlvlm_jax.rl.optimizer import stop_frozen, trainable_part
from rlvlm_jax.text.byte_table import byte_table
from rlvlm_jax.text.parse_device import make_action_parser, parse_tokens
from rlvlm_jax.text.prompt_encoder import PromptEncoder
from rlvlm_jax.text.tokenizer import encode_prompts


class SFTData(NamedTuple):
    """Encoded demonstrations [N, ...] (device arrays once put there)."""

    frames: jax.Array  # uint8 [N, S, S, 3]
    prompt_ids: jax.Array  # int32 [N, P]
    prompt_mask: jax.Array  # int32 [N, P]
    response: jax.Array  # int32 [N, R] response ids + EOS, right-padded
    response_mask: jax.Array  # int32 [N, R]
    action: jax.Array  # int32 [N] demonstrated action
    oracle: jax.Array  # int32 [N] the oracle's action


class TextData(NamedTuple):
    """Text-only records [M, ...] mixed into SFT: a left-padded context (BOS first) and the
    right-padded continuation that is scored. No picture: the decoder alone reads them."""

    prompt_ids: jax.Array  # int32 [M, P]
    prompt_mask: jax.Array  # int32 [M, P]
    response: jax.Array  # int32 [M, R]
    response_mask: jax.Array  # int32 [M, R]


# config.sft.text_corpus -> the records' source ("": none). "solutions": every hand's solutions
# along the oracle's way, in the words of the thoughts (`demonstrations.solution_corpus`).
TEXT_CORPORA = ("", "solutions")


def text_records(name: str, task: str | Task, sort_values: bool) -> list[tuple[str, str]]:
    """(context, continuation) pairs of the named text corpus for `task`."""
    if name == "solutions":
        return demonstrations.solution_corpus(task, sort_values)
    raise ValueError(f"unknown text corpus {name!r}; known: {[n for n in TEXT_CORPORA if n]}")


def encode_text(records: list[tuple[str, str]], tokenizer) -> TextData:
    """Contexts tokenised with BOS and left-padded, continuations without BOS, right-padded (no
    EOS: a record is the middle of an answer), both to their longest."""
    ctx = [tokenizer(a)["input_ids"] for a, _ in records]
    cont = [tokenizer(b, add_special_tokens=False)["input_ids"] for _, b in records]
    p, r = max(map(len, ctx)), max(map(len, cont))
    pad = tokenizer.pad_token_id or 0
    ids, mask = np.full((len(records), p), pad, np.int32), np.zeros((len(records), p), np.int32)
    resp = np.full((len(records), r), pad, np.int32)
    rmask = np.zeros_like(resp)
    for i, (a, b) in enumerate(zip(ctx, cont, strict=True)):
        ids[i, p - len(a):], mask[i, p - len(a):] = a, 1
        resp[i, : len(b)], rmask[i, : len(b)] = b, 1
    return TextData(ids, mask, resp, rmask)


_FORMULA = re.compile(r"current formula: (.*?)\. You can choose")
_CODES = TEXT_CODE  # formula token text -> code


def formula_codes(prompt: str) -> list[int]:
    """Token codes of the formula shown in an original EZPoints/Points24 prompt ("" -> [])."""
    m = _FORMULA.search(prompt)
    if m is None:
        return []
    text, codes, i = m.group(1), [], 0
    while i < len(text):
        if text.startswith("10", i):
            codes.append(10)
            i += 2
        else:
            codes.append(_CODES[text[i]])
            i += 1
    return codes


def encode_demonstrations(data: sft_data.Demonstrations, encoder: PromptEncoder, tokenizer,
                          response_len: int, prompt_text: bool = False) -> SFTData:
    """Prompts through `encoder` (formula read back from the original prompt text), responses
    tokenised without BOS and ended with EOS. Raises if a response does not fit.

    `prompt_text=True` encodes the records' own prompt texts instead (LLaVA JSON data, whose
    prompts are whatever the file says), padded to the encoder's length.
    """
    n = len(data)
    ids = np.zeros((n, encoder.length), np.int32)
    mask = np.zeros_like(ids)
    if prompt_text:
        ids, mask = encode_prompts(tokenizer, data.prompts, encoder.num_image_tokens,
                                   encoder.length)
    resp = np.full((n, response_len), encoder.pad_id, np.int32)
    rmask = np.zeros_like(resp)
    for i in range(n):
        if not prompt_text:
            codes = formula_codes(data.prompts[i]) if encoder.num_slots else []
            ids[i], mask[i] = encoder.host(codes)
        toks = tokenizer(data.responses[i], add_special_tokens=False)["input_ids"]
        toks = toks + [tokenizer.eos_token_id]
        if len(toks) > response_len:
            raise ValueError(
                f"demonstration {i} is {len(toks)} tokens with EOS; max_new_tokens is "
                f"{response_len}"
            )
        resp[i, : len(toks)] = toks
        rmask[i, : len(toks)] = 1
    return SFTData(data.images, ids, mask, resp, rmask, data.actions, data.oracle_actions)


def make_sft_data(env, tokenizer, encoder, num: int, key, wrong_share: float, cot: bool,
                  response_len: int) -> SFTData:
    demos = sft_data.make_demonstrations(env, num, key, wrong_share=wrong_share, cot=cot)
    return encode_demonstrations(demos, encoder, tokenizer, response_len)


def _nll(model, batch, images):
    s = scoring.token_logprobs(model, batch.prompt_ids, batch.prompt_mask, images,
                               batch.response, batch.response_mask)
    n = jnp.maximum(jnp.sum(batch.response_mask), 1)
    return -jnp.sum(s.logprobs) / n, n


def sft_loss(policy, params, batch: SFTData, freeze_vision: bool = False,
             text: TextData | None = None):
    """Mean negative log-likelihood per response token (EOS included), and metrics; with a
    `text` batch, plus the mean NLL of its continuations (logged as `text_loss`)."""
    params = stop_frozen(params, freeze_vision)
    model = policy.model(params)
    loss, n = _nll(model, batch, policy.preprocess(batch.frames))
    metrics = {"loss": loss, "tokens": n}
    if text is not None:
        metrics["text_loss"], _ = _nll(model, text, None)
        loss = loss + metrics["text_loss"]
    return loss, metrics


def make_sft_step(policy, tx: optax.GradientTransformation, freeze_vision: bool = False,
                  compiler_options: dict | None = None):
    """Jitted `step(params, opt_state, data, idx[, text, text_idx]) -> (params, opt_state,
    metrics)`; create once.

    `data` (and the text-only records `text`) stay on the device; `idx` [batch] (`text_idx`)
    picks the rows. params and opt_state are donated.
    """

    def step(params, opt_state, data, idx, text=None, text_idx=None):
        batch = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), data)
        tb = None if text is None else jax.tree.map(lambda x: jnp.take(x, text_idx, axis=0), text)
        (_, metrics), grads = jax.value_and_grad(
            lambda p: sft_loss(policy, p, batch, freeze_vision, tb), has_aux=True
        )(params)
        metrics["grad_norm"] = optax.tree.norm(trainable_part(grads, freeze_vision))
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    return jax.jit(step, donate_argnums=(0, 1), compiler_options=compiler_options)


def make_sft_eval(policy, tokenizer, task: str | Task, max_new_tokens: int,
                  compiler_options: dict | None = None):
    """Jitted greedy `answer(params, frames, ids, mask) -> (tokens, lengths, action)`."""
    cfg = sampling.SamplingConfig(
        max_new_tokens=max_new_tokens,
        pad_id=tokenizer.pad_token_id or 0,
        eos_ids=(policy.cfg.eos_token_id,),
    )
    table = byte_table(tokenizer, policy.cfg.text.vocab_size)
    parser = make_action_parser(task)

    def answer(params, frames, ids, mask):
        knobs = sampling.make_knobs(0.0, eos_ids=cfg.eos_ids)
        model = policy.model(params)
        out, _ = sampling.generate(
            model, ids, mask, policy.preprocess(frames), jax.random.key(0), knobs, cfg=cfg
        )
        parsed, _ = jax.vmap(lambda t, n: parse_tokens(parser, table, t, n))(
            out.tokens, out.lengths
        )
        return out.tokens, out.lengths, parsed.action

    return jax.jit(answer, compiler_options=compiler_options)


def fact_prefix(response: str) -> str:
    """The response up to the end of the first sentence of its thoughts (the read-out facts)."""
    at = response.find('"thoughts": "')
    if at < 0:
        return response
    end = response.find(".", at)
    return response[: end + 1] if end >= 0 else response


def evaluate_sft(answer, params, data: SFTData, tokenizer, reference: list[str] | None = None,
                 batch: int = 256) -> dict[str, float]:
    """Greedy answers on `data`: action accuracy vs the oracle, parse rate, and (given the
    oracle's reference responses) fact accuracy."""
    n = int(data.prompt_ids.shape[0])
    actions, texts = [], []
    for lo in range(0, n, batch):
        sl = slice(lo, min(lo + batch, n))
        rows = jax.tree.map(lambda x, sl=sl: x[sl], data)
        pad = batch - rows.prompt_ids.shape[0]
        if pad:  # one compiled shape: pad the last chunk by repeating its first row
            rows = jax.tree.map(lambda x, p=pad: jnp.concatenate([x, jnp.repeat(x[:1], p, 0)]),
                                rows)
        toks, lens, act = answer(params, rows.frames, rows.prompt_ids, rows.prompt_mask)
        toks, lens, act = to_host((toks, lens, act))
        keep = batch - pad
        actions.append(act[:keep])
        texts += [tokenizer.decode(t[:k], skip_special_tokens=True)
                  for t, k in zip(toks[:keep], lens[:keep], strict=True)]
    actions = np.concatenate(actions)
    oracle = np.asarray(data.oracle)
    out = {
        "action_accuracy": float(np.mean(actions == oracle)),
        "parse_rate": float(np.mean(actions >= 0)),
    }
    if reference is not None:
        out["fact_accuracy"] = float(
            np.mean([fact_prefix(r) == t[: len(fact_prefix(r))]
                     for r, t in zip(reference, texts, strict=True)])
        )
    out["sample"] = texts[0]
    return out


def train_sft(step_fn, params, opt_state, data: SFTData, num_steps: int, batch_size: int,
              key, *, start: int = 0, eval_fn=None, eval_every: int = 0, log_fn=None,
              text: TextData | None = None, text_batch_size: int = 0):
    """Runs SFT steps [start, num_steps); batch indices come from `key` and the step number, so a
    resumed run draws the same batches. With `text`, each step also takes `text_batch_size`
    text-only records (drawn from a stream of their own: the picture batches stay the same).
    Returns (params, opt_state, history)."""
    n = int(data.prompt_ids.shape[0])
    history = []
    t0 = time.time()
    for i in range(start, num_steps):
        k = jax.random.fold_in(key, i)
        idx = jax.random.randint(k, (batch_size,), 0, n)
        extra = ()
        if text is not None and text_batch_size:
            m = int(text.prompt_ids.shape[0])
            extra = (text, jax.random.randint(jax.random.fold_in(k, 1), (text_batch_size,), 0, m))
        params, opt_state, metrics = step_fn(params, opt_state, data, idx, *extra)
        record = {"step": i + 1}
        last = i + 1 == num_steps
        if eval_fn is not None and eval_every and ((i + 1) % eval_every == 0 or last):
            record.update(eval_fn(params))
        if log_fn is not None or last or "action_accuracy" in record:
            record.update({k: float(v) for k, v in to_host(metrics).items()})
            record["time"] = time.time() - t0
            history.append(record)
            if log_fn is not None:
                log_fn(record)
    return params, opt_state, history
