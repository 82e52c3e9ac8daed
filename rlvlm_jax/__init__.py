"""rlvlm_jax: RL fine-tuning of vision-language models as decision-making agents, in JAX."""
