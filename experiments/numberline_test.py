"""A seconds-scale NumberLine config for tests and smoke runs (learns nothing useful).

python -m rlvlm_jax.train --config experiments/numberline_test.py --workdir /tmp/nl_test
"""

import ml_collections

from rlvlm_jax.config_files import load_sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = load_sibling(__file__, "numberline_tiny.py").get_config(arg)
    c.image_size = 56  # small pictures (NumberLine's text is legible at 56 px)
    c.pretrain.enabled = False  # from random weights: no reader to build
    c.max_new_tokens = 72  # room for a whole demonstration (SFT encodes them)
    c.model.vision_hidden = 32  # ViT width
    c.model.vision_mlp = 64  # ViT MLP width
    c.model.vision_layers = 1  # ViT depth
    c.model.vision_heads = 2  # ViT heads
    c.model.patch_size = 14  # 56 / 14 = 4 -> 16 image tokens
    c.model.text_hidden = 32  # decoder width
    c.model.text_mlp = 64  # decoder MLP width
    c.model.text_layers = 1  # decoder depth
    c.model.text_heads = 2  # query heads
    c.model.text_kv_heads = 1  # key/value heads (GQA)
    c.model.value_hidden = (16,)  # value-head MLP
    c.sft.steps = 3  # a few supervised steps
    c.sft.batch_size = 4  # demonstrations per step
    c.sft.num_demos = 16  # generated demonstrations
    c.sft.eval_every = 3  # SFT evaluation at the end
    c.sft.eval_samples = 4  # held-out demonstrations
    c.ppo.iterations = 2  # rollout + update cycles
    c.ppo.num_envs = 4  # environments
    c.ppo.num_steps = 2  # env steps per rollout
    c.ppo.minibatches = 2  # optimiser steps per epoch
    c.ppo.micro_batches = 2  # gradient accumulation
    c.ppo.lr = 1e-3  # large enough that one update visibly moves the params
    c.ppo.lr_end = 1e-4  # cosine end
    c.ppo.temperature = 1.0  # random models need no sharpening
    c.eval.episodes = 4  # evaluation episodes
    c.eval.max_steps = 2  # evaluation steps per env
    c.eval.every = 0  # no mid-PPO evaluations
    c.log_every = 1  # log every iteration
    c.checkpoint_every = 1  # checkpoint every iteration
    c.fast_compile = True  # tests: compile time dominates
    return c
