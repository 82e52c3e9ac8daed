"""Compiled sampling: one prefill over the padded prompt, then a `lax.while_loop` decode.

Shapes are static (prompt length P, max new tokens T, cache length P + T), so one compilation
serves every call with the same shapes; temperature, top-p and the PRNG key are traced values and
never cause a recompile. The KV cache is donated to both compiled steps and updated in place.

Returned log-probs are those of the sampled tokens under the full (untruncated) softmax of
logits / temperature, i.e. what `scoring.token_logprobs` computes teacher-forced at the same
temperature; greedy decoding (temperature 0) reports them at temperature 1.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvlm_jax.models.llama import init_cache
from rlvlm_jax.models.llava import LlavaConfig, check_image_tokens


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static sampling settings (changing them recompiles); temperature/top_p are per call."""

    max_new_tokens: int = 256
    top_k: int = 0  # 0: off
    eos_ids: tuple[int, ...] = (2,)
    pad_id: int = 0
    cache_dtype: str | None = None  # None: the model's compute dtype


class SampleOutput(NamedTuple):
    tokens: jax.Array  # (B, T) int32, pad_id after a row's EOS
    lengths: jax.Array  # (B,) int32, generated tokens including the EOS
    logprobs: jax.Array  # (B, T) float32, 0 after a row's end


class DecodeState(NamedTuple):
    """Everything the decode loop carries besides the cache."""

    tokens: jax.Array  # (B, T)
    logprobs: jax.Array  # (B, T)
    done: jax.Array  # (B,) bool
    lengths: jax.Array  # (B,)
    step: jax.Array  # () next index of `tokens` to fill
    kv_mask: jax.Array  # (B, P + T) bool: filled cache slots
    prompt_len: jax.Array  # (B,) real prompt tokens per row (RoPE position of token 0)
    rng: jax.Array
    temperature: jax.Array
    top_p: jax.Array


def filter_logits(scaled: jax.Array, top_k: int, top_p: jax.Array) -> jax.Array:
    """Mask (to -inf) tokens outside top-k (static) and the top-p nucleus (traced)."""
    neg = jnp.finfo(scaled.dtype).min
    if top_k > 0:
        kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
        scaled = jnp.where(scaled < kth, neg, scaled)

    def nucleus(x):
        srt = jnp.sort(x, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(srt, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted token
        keep = before < top_p
        cutoff = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
        return jnp.where(x < cutoff, neg, x)

    return jax.lax.cond(top_p < 1.0, nucleus, lambda x: x, scaled)


def sample_token(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_k: int,
                 top_p: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, V) float32 logits -> (token, log-prob at temperature); temperature <= 0 is greedy."""
    greedy = temperature <= 0
    scaled = logits / jnp.where(greedy, 1.0, temperature)
    logp = jax.nn.log_softmax(scaled, axis=-1)
    drawn = jax.random.categorical(key, filter_logits(scaled, top_k, top_p), axis=-1)
    token = jnp.where(greedy, jnp.argmax(logits, axis=-1), drawn).astype(jnp.int32)
    return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


def _record(state: DecodeState, token, logp, eos_ids, pad_id) -> DecodeState:
    """Write step `state.step`'s token for rows still running; stop rows that hit EOS."""
    live = ~state.done
    token = jnp.where(live, token, pad_id)
    logp = jnp.where(live, logp, 0.0)
    tokens = jax.lax.dynamic_update_slice(state.tokens, token[:, None], (0, state.step))
    logprobs = jax.lax.dynamic_update_slice(state.logprobs, logp[:, None], (0, state.step))
    hit = jnp.isin(token, jnp.asarray(eos_ids, jnp.int32))
    return state._replace(tokens=tokens, logprobs=logprobs, lengths=state.lengths + live,
                          done=state.done | (live & hit), step=state.step + 1)


def prefill(model, input_ids, attention_mask, images, cache, rng, temperature, top_p, *,
            cfg: SamplingConfig) -> tuple[DecodeState, dict]:
    """Run the left-padded prompt, fill the cache, sample the first new token."""
    b, p = input_ids.shape
    t = cfg.max_new_tokens
    temperature = jnp.asarray(temperature, jnp.float32)
    top_p = jnp.asarray(top_p, jnp.float32)
    hidden, cache = model.prefill(input_ids, images, attention_mask, cache)
    logits = model.text.logits(hidden)
    mask = attention_mask.astype(bool)
    state = DecodeState(
        tokens=jnp.full((b, t), cfg.pad_id, jnp.int32),
        logprobs=jnp.zeros((b, t), jnp.float32),
        done=jnp.zeros((b,), bool), lengths=jnp.zeros((b,), jnp.int32),
        step=jnp.int32(0),
        kv_mask=jnp.concatenate([mask, jnp.zeros((b, t), bool)], axis=1),
        prompt_len=jnp.sum(mask, axis=1, dtype=jnp.int32),
        rng=rng, temperature=temperature, top_p=top_p)
    token, logp = sample_token(logits, jax.random.fold_in(rng, 0), temperature, cfg.top_k, top_p)
    return _record(state, token, logp, cfg.eos_ids, cfg.pad_id), cache


def decode(model, state: DecodeState, cache, *, cfg: SamplingConfig
           ) -> tuple[DecodeState, dict]:
    """Feed the last token and sample the next until every row stopped or T tokens exist."""
    p = state.kv_mask.shape[1] - cfg.max_new_tokens

    def cond(carry):
        state, _ = carry
        return (state.step < cfg.max_new_tokens) & ~jnp.all(state.done)

    def body(carry):
        state, cache = carry
        prev = state.step - 1
        token = jax.lax.dynamic_index_in_dim(state.tokens, prev, axis=1, keepdims=False)
        slot = p + prev
        kv_mask = jax.lax.dynamic_update_slice(
            state.kv_mask, jnp.ones((state.kv_mask.shape[0], 1), bool), (0, slot))
        logits, cache = model.decode(token, state.prompt_len + prev, kv_mask, cache, slot)
        key = jax.random.fold_in(state.rng, state.step)
        token, logp = sample_token(logits, key, state.temperature, cfg.top_k, state.top_p)
        state = _record(state._replace(kv_mask=kv_mask), token, logp, cfg.eos_ids, cfg.pad_id)
        return state, cache

    return jax.lax.while_loop(cond, body, (state, cache))


def generate(model, input_ids, attention_mask, images, cache, rng, temperature=1.0, top_p=1.0,
             *, cfg: SamplingConfig) -> tuple[SampleOutput, dict]:
    """Traceable prefill + decode, for use inside larger compiled functions (rollouts)."""
    state, cache = prefill(model, input_ids, attention_mask, images, cache, rng, temperature,
                           top_p, cfg=cfg)
    state, cache = decode(model, state, cache, cfg=cfg)
    return SampleOutput(state.tokens, state.lengths, state.logprobs), cache


class Sampler:
    """Jitted prefill and decode for one model graph. Create once; call with params each time.

    `in_shardings`-style placement comes from rlvlm_jax.sharding when a mesh is given. The cache
    passed in is donated; keep the returned one for the next call to reuse its memory.
    """

    def __init__(self, graphdef, cfg: LlavaConfig, sampling: SamplingConfig, *,
                 shardings=None):
        self.graphdef = graphdef
        self.cfg = cfg
        self.sampling = sampling
        self.trace_counts = collections.Counter()  # traces per compiled function (tests)
        self.shardings = shardings
        jit_kw = {} if shardings is None else shardings.sampler_jit_kwargs()
        self._prefill = jax.jit(self._prefill_impl, donate_argnames=("cache",),
                                **jit_kw.get("prefill", {}))
        self._decode = jax.jit(self._decode_impl, donate_argnames=("cache",),
                               **jit_kw.get("decode", {}))

    def _prefill_impl(self, params, input_ids, attention_mask, images, cache, rng, temperature,
                      top_p):
        self.trace_counts["prefill"] += 1
        model = nnx.merge(self.graphdef, params)
        return prefill(model, input_ids, attention_mask, images, cache, rng, temperature, top_p,
                       cfg=self.sampling)

    def _decode_impl(self, params, state, cache):
        self.trace_counts["decode"] += 1
        model = nnx.merge(self.graphdef, params)
        return decode(model, state, cache, cfg=self.sampling)

    def init_cache(self, params, batch: int, prompt_len: int) -> dict:
        """A cache for prompts of `prompt_len` tokens plus max_new_tokens (model's dtype)."""
        dtype = self.sampling.cache_dtype or nnx.merge(self.graphdef, params).dtype
        cache = init_cache(self.cfg.text, batch, prompt_len + self.sampling.max_new_tokens,
                           dtype)
        if self.shardings is not None:
            cache = jax.device_put(cache, self.shardings.cache_sharding(cache))
        return cache

    def validate(self, input_ids, images) -> None:
        """Host-side checks that raise readable errors before anything compiles."""
        b, p = np.shape(input_ids)
        total = p + self.sampling.max_new_tokens
        limit = self.cfg.text.max_position_embeddings
        if total > limit:
            raise ValueError(f"prompt length {p} + max_new_tokens "
                             f"{self.sampling.max_new_tokens} = {total} exceeds the model's "
                             f"context of {limit} positions")
        if images is not None:
            n_img = 1 if np.ndim(images) == 4 else np.shape(images)[1]
            if isinstance(input_ids, np.ndarray):  # host data: check for free, no device sync
                check_image_tokens(input_ids, n_img, self.cfg)
        if self.shardings is not None:
            self.shardings.check_batch(b)

    def __call__(self, params, input_ids, attention_mask, images, rng, temperature=1.0,
                 top_p=1.0, cache=None) -> tuple[SampleOutput, dict]:
        """Sample up to max_new_tokens per row. Prompts must be left-padded."""
        self.validate(input_ids, images)
        if cache is None:
            cache = self.init_cache(params, *np.shape(input_ids))
        state, cache = self._prefill(params, input_ids, attention_mask, images, cache, rng,
                                     jnp.float32(temperature), jnp.float32(top_p))
        state, cache = self._decode(params, state, cache)
        return SampleOutput(state.tokens, state.lengths, state.logprobs), cache
