"""RL4VLM's value head against the torch MLP it re-implements, and the last-prompt-token pick."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from rlvlm_jax.models.value_head import ValueHead, last_prompt_hidden


def test_matches_torch_mlp():
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16),
                              torch.nn.ReLU(), torch.nn.Linear(16, 1))
    head = ValueHead(64, (32, 16), rngs=nnx.Rngs(0))
    for i, layer in enumerate(ref[::2]):
        getattr(head, f"kernel_{i}")[...] = jnp.asarray(layer.weight.detach().numpy().T)
        getattr(head, f"bias_{i}")[...] = jnp.asarray(layer.bias.detach().numpy())
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    ours = head(jnp.asarray(x, jnp.bfloat16))  # bf16 hidden states are upcast
    assert ours.shape == (5,) and ours.dtype == jnp.float32
    want = ref(torch.tensor(x)).detach().numpy()[:, 0]
    np.testing.assert_allclose(np.asarray(head(jnp.asarray(x))), want, rtol=1e-5, atol=1e-6)


def test_last_prompt_hidden_left_and_right_padding():
    hidden = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = jax.jit(last_prompt_hidden)(hidden, mask)
    np.testing.assert_array_equal(out, hidden[jnp.arange(2), jnp.array([4, 2])])
