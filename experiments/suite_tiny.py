"""MAYE's single-turn setting on a CPU: the generated card suite, the tiny reader, SFT on worked
solutions, then Reinforce++ (or GRPO / RLOO) with verifiable rewards.

python -m rlvlm_jax.train_single --config experiments/suite_tiny.py --workdir outputs/suite
python -m rlvlm_jax.train_single --config experiments/suite_tiny.py:grpo ...   # GRPO, 4 per prompt
python -m rlvlm_jax.train_single --config experiments/suite_tiny.py:rloo ...   # RLOO, 4 per prompt

MAYE's own data: --config.data.train=DIR/train.jsonl --config.data.validation=DIR/val.jsonl
--config.data.test=DIR/test.jsonl --config.data.reward=math_verify (with a model that can read
maths; the tiny reader cannot).

A fifth kind, Points24 "write a formula that makes 24" (`points24_formula`, checked by
`--config.data.reward=exact_or_formula`, which accepts any formula of the four cards' values that
makes 24), is not in the default suite. Measured (GRPO, seed 0, 2026-11-29, on 1be055d plus the
kind, `:grpo --config.data.suite_kinds=numberline_steps,ezpoints_difference,points24_formula,
blackjack_action --config.data.reward=exact_or_formula`, 501 s): test pass@1 T0.01 57.8 -> 60.9;
the formula kind 15.6 -> 28.1%, but all of it from answering "no" (21 of 32 test answers after
RL, 9 before; 27% of hands cannot make 24): right formulas 0 of 23 -> 1 of 23. The tiny model
writes formulas of the right shape from the right cards that do not make 24.

The model, tokenizer and reader recipe are the card tasks' (experiments/numberline_tiny.py): the
suite's pictures are the environments' own, so the one cached reader serves both settings.
"""

import ml_collections

from rlvlm_jax.config_files import load_sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    base = load_sibling(__file__, "numberline_tiny.py").get_config()
    c = ml_collections.ConfigDict()
    c.seed = 0  # every random draw (init, data order, sampling) derives from this
    c.image_size = base.image_size  # the reader's picture side
    c.template = "short"  # "llava_v1": LLaVA's system text first; "short": the question only
    c.max_new_tokens = 64  # response limit (the suite's worked solutions are <= ~45 tokens)
    c.prompt_length = 0  # padded prompt tokens (0: the longest prompt of the data)
    c.tokenizer = base.tokenizer
    c.model = base.model
    c.pretrain = base.pretrain  # the reader the run starts from when model.checkpoint is ""

    c.data = ml_collections.ConfigDict()
    c.data.train = "suite"  # "suite" (generated) or a MAYE JSONL file
    c.data.validation = "suite"
    c.data.test = "suite"
    c.data.suite_kinds = "numberline_steps,ezpoints_difference,points24_solvable,blackjack_action"
    c.data.suite_seed = 0  # the suite's own draw (fixed splits, independent of c.seed)
    c.data.train_size = 2048  # generated training problems
    c.data.eval_size = 128  # generated problems per evaluation split
    c.data.reward = "exact"  # answer checker: exact (suite) or math_verify (MAYE's maths)

    c.sft = ml_collections.ConfigDict()
    c.sft.steps = 1000  # supervised steps on the training split's worked solutions (0: none);
    # still gaining at 1,000 (test pass@1 T0.01, seed 0: 43.8 / 71.9 / 75.8 at 100 / 300 / 1,000)
    c.sft.batch_size = 32
    c.sft.lr = 1e-3
    c.sft.warmup = 10
    c.sft.weight_decay = 0.0
    c.sft.grad_clip = 1.0

    c.rl = ml_collections.ConfigDict()
    c.rl.algorithm = "reinforce_pp"  # reinforce_pp (MAYE), grpo or rloo
    c.rl.group_size = 1  # responses per prompt (MAYE's Reinforce++: 1; GRPO/RLOO need >= 2)
    c.rl.prompts_per_batch = 128  # prompts per generation step (x group_size responses)
    c.rl.epochs = 2  # "epochs" of iterations_per_epoch generation steps (evaluated after each)
    c.rl.iterations_per_epoch = 32  # generation steps per epoch
    c.rl.update_epochs = 1  # passes over one step's responses
    c.rl.minibatches = 2  # optimiser steps per pass
    c.rl.temperature = 1.0  # sampling temperature of training responses (MAYE: 1.0)
    c.rl.lr = 1e-4  # 5e-4 from a 100-step SFT lost the worked solutions' language (KL ~0.9)
    c.rl.lr_end = 1e-5  # cosine end value
    c.rl.warmup = 0
    c.rl.weight_decay = 0.0
    c.rl.grad_clip = 1.0
    c.rl.clip_eps = 0.2  # token-level ratio clip (MAYE: 0.2)
    c.rl.policy_loss = "ppo_clip"
    c.rl.kl_loss_coef = 0.01  # k-estimator KL to the frozen start policy, as a loss (MAYE: 0.001)
    c.rl.kl_reward_coef = 0.0  # per-token KL in the reward (Reinforce++ proper; MAYE: 0)
    c.rl.kl_estimator = "k3"
    c.rl.ent_coef = 0.0
    c.rl.no_eos_penalty = -0.1  # the whole reward of a response cut at max_new_tokens (MAYE)
    c.rl.format_weight = 0.0  # reward for a boxed answer being present (MAYE: effectively 0)
    c.rl.freeze_vision = True  # keep the reader's ViT fixed

    c.eval = ml_collections.ConfigDict()
    c.eval.pass_k = 8  # samples per problem for pass@k at T = 1.0 (MAYE: 8)
    c.eval.batch_size = 64  # problems per evaluation call

    c.log_every = 8
    c.keep_checkpoints = 2
    c.mesh = ""
    c.fast_compile = False
    if arg in ("grpo", "rloo"):
        c.rl.algorithm = arg
        c.rl.group_size = 4
        c.rl.prompts_per_batch = 32
    elif arg not in (None, ""):
        raise ValueError(f"unknown variant {arg!r}; use grpo or rloo (default: reinforce_pp)")
    return c
