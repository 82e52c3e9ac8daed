"""Epochs x minibatches over a flat rollout buffer, and gradient accumulation over micro-batches.

Index sets rather than gathered copies: the buffer (pictures included) stays in place and each
minibatch is gathered inside the `lax.scan` body that consumes it.

Gradient accumulation scaling: the buffer of a minibatch (n samples) is split into K equal
micro-batches of n / K. With `reduce="mean"` the summed micro-batch gradients are divided by K,
which equals the big-batch gradient when `loss_fn` is a *mean* over its micro-batch (the usual
case, and what RL4VLM's accelerate accumulation did). With masks the per-micro-batch means weigh
micro-batches equally, not samples; for exact sample weighting return sum / (valid count of the
whole minibatch) from `loss_fn` and use `reduce="sum"`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def shuffle_indices(key, n, num_epochs, num_minibatches):
    """int32 [num_epochs, num_minibatches, n // num_minibatches]: a fresh permutation per epoch."""
    if n % num_minibatches:
        raise ValueError(f"buffer of {n} samples does not split into {num_minibatches} minibatches")
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, num_epochs))
    return perms.reshape(num_epochs, num_minibatches, n // num_minibatches).astype(jnp.int32)


def gather(tree, idx):
    """Rows `idx` of every leaf (leading axis is the sample axis)."""
    return jax.tree.map(lambda x: jnp.take(x, idx, axis=0), tree)


def split_micro(tree, num_micro):
    """[n, ...] leaves -> [num_micro, n // num_micro, ...] (consecutive rows per micro-batch)."""

    def split(x):
        if x.shape[0] % num_micro:
            raise ValueError(f"batch of {x.shape[0]} does not split into {num_micro} micro-batches")
        return x.reshape(num_micro, x.shape[0] // num_micro, *x.shape[1:])

    return jax.tree.map(split, tree)


def accumulate_gradients(loss_fn, params, batch, num_micro, *, reduce="mean"):
    """Gradients of `loss_fn(params, micro_batch) -> (loss, aux)` accumulated with `lax.scan`.

    Only one micro-batch's activations are live at a time. Accumulation is in float32 (bf16
    params would lose the small terms); the result is cast back to each param's dtype. Returns
    (grads, losses [K], aux stacked over the K micro-batches). Per-sample randomness (dropout)
    should travel in `batch`, e.g. as per-sample keys.
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', not {reduce!r}")
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def body(acc, micro):
        (loss, aux), grads = grad_fn(params, micro)
        acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), acc, grads)
        return acc, (loss, aux)

    init = jax.tree.map(
        lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)), params
    )
    acc, (losses, aux) = jax.lax.scan(body, init, split_micro(batch, num_micro))
    scale = 1.0 / num_micro if reduce == "mean" else 1.0
    grads = jax.tree.map(lambda a, p: (a * scale).astype(p.dtype), acc, params)
    return grads, losses, aux


def accumulated_update(
    loss_fn, tx: optax.GradientTransformation, params, opt_state, batch, num_micro, *, reduce="mean"
):
    """One optimiser step on the accumulated gradients of a minibatch.

    Returns (params, opt_state, grads, losses [K], aux stacked over K).
    """
    grads, losses, aux = accumulate_gradients(loss_fn, params, batch, num_micro, reduce=reduce)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, grads, losses, aux
