"""The paper's CNN+RL baseline: a small conv actor-critic trained with PPO on the env's pictures.

python -m rlvlm_jax.baselines.cnn_ppo --config experiments/cnn_ppo.py --workdir outputs/cnn_nl
python -m rlvlm_jax.baselines.cnn_ppo --config experiments/cnn_ppo.py:EZPoints --workdir ...
python -m rlvlm_jax.baselines.cnn_ppo --config experiments/cnn_ppo.py --workdir ... \
    --config.task=Blackjack --config.seed=1

One config for all four tasks (the argument or --config.task picks the task), on the VLM runs'
112 px pictures. Sized for a 2-core CPU: 131072 env steps. Measured at each task's smallest
picture size instead (--config.image_size=0), seed 0: NumberLine 1.000 in 56 s, EZPoints 0.000
in 110 s, Points24 0.000 in 149 s, Blackjack 0.408 in 192 s (the paper's CNN+RL: 87.1, 0, 0,
38.8); the README's table has the 112 px runs. Discount and GAE lambda are the VLM runs'.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = "cnn_ppo"  # the report's row name (the VLM trainer's configs have no method)
    c.task = arg or "NumberLine"  # NumberLine, EZPoints, Points24 or Blackjack
    c.seed = 0  # every random draw (init, env resets, sampling, evaluation) derives from this
    c.image_size = 112  # env picture side (the VLM runs'); 0: the task's smallest legible size

    c.model = ml_collections.ConfigDict()
    c.model.channels = (32, 32)  # output channels of the conv layers
    c.model.kernels = (4, 3)  # conv kernel sides (square); the first, with stride 4: 4x4 patches
    c.model.strides = (4, 2)  # conv strides (non-overlapping first patches keep 101 px cheap)
    c.model.hidden = 128  # width of the dense layer shared by the policy and value heads

    c.ppo = ml_collections.ConfigDict()
    c.ppo.total_env_steps = 131072  # env steps of training, rounded up to whole updates
    c.ppo.num_envs = 32  # environments stepped together (vmapped)
    c.ppo.num_steps = 32  # env steps per env per update (buffer = num_envs * num_steps)
    c.ppo.epochs = 4  # passes over the buffer per update
    c.ppo.minibatches = 4  # optimiser steps per epoch (must divide the buffer)
    c.ppo.lr = 1e-3  # Adam learning rate (5e-4 needed twice the steps on NumberLine)
    c.ppo.anneal_lr = True  # decay the learning rate linearly to 0 over the run
    c.ppo.grad_clip = 0.5  # global-norm clipping
    c.ppo.clip_eps = 0.2  # PPO ratio clip
    c.ppo.value_clip_eps = 0.2  # value clip around the rollout's values
    c.ppo.vf_coef = 0.5  # value-loss weight
    c.ppo.ent_coef = 0.01  # entropy bonus
    c.ppo.gamma = 0.9  # discount (as the VLM runs)
    c.ppo.gae_lambda = 0.95  # GAE lambda (as the VLM runs)
    c.ppo.truncation_as_termination = False  # True: no bootstrap on time limits (the original)

    c.eval = ml_collections.ConfigDict()
    c.eval.episodes = 500  # first episodes of this many envs, before and after training
    c.eval.temperature = 1.0  # sampling temperature of the evaluation (<= 0: greedy)
    c.eval.max_steps = 32  # env steps per env (every task's first episode ends within 22)

    c.log_every = 16  # updates between console lines (history and TensorBoard get every one)
    return c
