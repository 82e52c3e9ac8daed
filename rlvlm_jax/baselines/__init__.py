"""Baselines of RL4VLM's table, evaluated and recorded exactly like the VLM runs.

- `cnn_ppo`: a small convolutional actor-critic trained with PPO on the envs' pictures (the
  paper's "CNN+RL" row).
- `policies`: the uniformly random and the oracle policy (floor and ceiling of each task), and the
  first-episode evaluation and output files that both modules share.

Both write config.json and results.json in the schema of `rlvlm_jax.train`, so one report reads
the VLM runs and these rows alike.
"""
