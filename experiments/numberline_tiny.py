"""NumberLine on a 2-core CPU, made the way RL4VLM is: a pretrained reader, SFT on half-wrong
demonstrations, then PPO.

python -m rlvlm_jax.train --config experiments/numberline_tiny.py --workdir outputs/nl_tiny
python -m rlvlm_jax.train --config experiments/numberline_tiny.py:nocot ...  # no-CoT ablation

A ~1M-parameter LLaVA (ViT 2x64 on 112 px, patch 14 -> 64 image tokens; decoder 2x128; the
project's byte-level BPE card tokenizer). It starts from the tiny reader that `config.pretrain`
(experiments/pretrain_tiny.py) describes: pretrained on first use (~9 min here) into the cache
($RLVLM_CACHE, else ~/.cache/rlvlm_jax), reused by every later run, seed and task.
`--config.pretrain.enabled=False` starts from random weights instead (the model then has to learn
to read from the task alone: NumberLine does, the card tasks do not). Deliberate differences from
the paper, for CPU budget only: the "short" prompt template (the task name instead of the
150-token LLaVA system + task prompt, whose text is constant for NumberLine), 112 px pictures,
and Adam at 3e-5 with 64 samples per update.
"""

import ml_collections

from rlvlm_jax.config_files import load_sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "NumberLine"  # NumberLine, EZPoints, Points24 or Blackjack
    c.seed = 0  # every random draw (init, data, rollouts) derives from this
    c.image_size = 112  # env picture side = vision tower input (the reader's; Blackjack >= 101)
    c.cot = arg != "nocot"  # chain-of-thought responses (False: the action-only ablation)
    c.template = "short"  # prompt template: "llava_v1" (original bytes) or "short" (task name)
    c.max_new_tokens = 72  # sampling limit per response (NumberLine CoT answers are ~63 tokens)

    c.env = ml_collections.ConfigDict()
    c.env.kind = "gymnax"  # "gymnax": the jitted card task; "host": a gymnasium env on the host
    c.env.host = ""  # with kind "host": the task spec, "package.module:name" (envs/host.py)
    c.env.style = "default"  # pictures: "default" (ours) or "original" (gym_cards' own, 300 px)
    c.env.card_images = ""  # with style "original": the original gym_cards checkout or package
    c.env.blanks = "skip"  # "=" skips blank tokens (the original) or "invalid" (stricter)

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""  # a tokenizer directory; "" builds the card tokenizer in the workdir
    c.tokenizer.vocab_size = 2048  # BPE merge budget when building (the corpus stops near 1.25k)

    c.model = ml_collections.ConfigDict()
    c.model.family = "llava"  # random-init architecture: "llava", "qwen2_vl" or "qwen2_5_vl"
    c.model.vision_hidden = 64  # ViT width
    c.model.vision_mlp = 256  # ViT MLP width
    c.model.vision_layers = 2  # ViT depth (LLaVA reads the second-to-last hidden state)
    c.model.vision_heads = 4  # ViT attention heads
    c.model.patch_size = 14  # 112 / 14 = 8 -> 64 image tokens
    c.model.vision_feature_layer = -1  # ViT hidden state read (LLaVA: -2; -1 uses both layers)
    c.model.text_hidden = 128  # decoder width
    c.model.text_mlp = 512  # decoder SwiGLU width
    c.model.text_layers = 2  # decoder depth
    c.model.text_heads = 4  # query heads
    c.model.text_kv_heads = 4  # key/value heads (GQA when fewer)
    c.model.vocab_size = 0  # 0: the tokenizer's size rounded up to a multiple of 64
    c.model.max_positions = 512  # RoPE context; must hold prompt + max_new_tokens
    c.model.value_hidden = (128,)  # value-head MLP widths (RL4VLM: 1024, 512)
    c.model.init_seed = 0  # parameter initialisation seed
    c.model.init = "fan_in"  # "fan_in": N(0, 1/fan_in) (from scratch); "normal": N(0, 0.02)
    c.model.pixels = "ink"  # "ink": (255 - x) / 255 (from scratch); "clip": CLIP mean/std
    c.model.checkpoint = ""  # a transformers LLaVA directory to start from ("": config.pretrain)
    c.model.dtype = "float32"  # compute dtype
    c.model.param_dtype = "float32"  # stored params (bfloat16 halves memory; fp32 Adam moments)
    c.model.remat = False  # rematerialise layers in the backward pass (memory for compute)

    # The reader this run starts from when model.checkpoint is "" (built on first use, cached).
    c.pretrain = load_sibling(__file__, "pretrain_tiny.py").recipe()

    c.sft = ml_collections.ConfigDict()
    c.sft.steps = 150  # supervised steps (0 skips SFT); reading appears near step 90
    c.sft.batch_size = 32  # demonstrations per step
    c.sft.num_demos = 4096  # demonstrations generated from the env's oracle
    c.sft.wrong_share = 0.5  # share of demonstrations with a deliberately wrong action
    c.sft.lr = 1e-3  # AdamW peak learning rate
    c.sft.warmup = 10  # linear warm-up steps, then cosine to lr / 10
    c.sft.weight_decay = 0.0  # AdamW decoupled weight decay
    c.sft.grad_clip = 1.0  # global-norm clipping
    c.sft.eval_every = 50  # greedy answers on held-out demonstrations every N steps
    c.sft.eval_samples = 256  # held-out demonstrations per SFT evaluation
    c.sft.json = ""  # LLaVA-format SFT JSON to train on instead of generated demonstrations
    c.sft.checkpoint_every = 0  # SFT steps between checkpoints (0: only at the end of SFT)
    c.sft.sort_values = False  # Points24: thoughts list the values in order (a solution's key)
    c.sft.text_corpus = ""  # text-only records mixed into SFT: "" or "solutions" (Points24)
    c.sft.text_batch_size = 0  # text-only records per SFT step (0 with text_corpus "")

    c.ppo = ml_collections.ConfigDict()
    c.ppo.iterations = 100  # rollout + update cycles (~1.7 s each here)
    c.ppo.num_envs = 32  # environments stepped together
    c.ppo.num_steps = 4  # env steps per env per rollout (buffer = num_envs * num_steps)
    c.ppo.epochs = 1  # passes over the buffer per iteration
    c.ppo.minibatches = 2  # optimiser steps per epoch
    c.ppo.micro_batches = 1  # gradient-accumulation micro-batches per minibatch
    c.ppo.lr = 3e-5  # Adam peak learning rate (3e-4 destroyed reading in the prototype)
    c.ppo.lr_end = 1e-5  # cosine end value
    c.ppo.warmup = 0  # linear warm-up updates
    c.ppo.weight_decay = 0.0  # AdamW decoupled weight decay
    c.ppo.grad_clip = 1.0  # global-norm clipping (applied, unlike the original)
    c.ppo.clip_eps = 0.2  # sequence-level ratio clip (paper: 0.1)
    c.ppo.value_clip_eps = 0.2  # value clip around the rollout's values (paper: 0.1)
    c.ppo.vf_coef = 0.5  # value-loss weight
    c.ppo.ent_coef = 0.0  # entropy bonus (entropy is logged either way)
    c.ppo.kl_coef = 0.0  # k-estimator KL to the frozen SFT policy (MAYE: 0.001)
    c.ppo.kl_estimator = "k3"  # k1, k2 or k3
    c.ppo.token_reduction = "token_mean"  # KL/entropy over tokens: losses.TOKEN_REDUCTIONS
    c.ppo.gamma = 0.9  # discount
    c.ppo.gae_lambda = 0.95  # GAE lambda
    c.ppo.thought_lambda = 0.5  # weight of the CoT tokens' log-probs in the action log-prob
    c.ppo.action_only = not c.cot  # log-prob of the action tokens only (no-CoT ablation)
    # Sampling temperature of rollouts (log-probs at the same value); evaluation stays at 0.2.
    # At 0.2 the policy went near-deterministic (token entropy ~1e-3) and one seed in three
    # stopped near 87%; at 1.0 the same three seeds end at 99.8 / 99.2 / 98.4%.
    c.ppo.temperature = 1.0
    c.ppo.truncation_as_termination = False  # True: no bootstrap on time limits (the original)
    c.ppo.freeze_vision = True  # keep the ViT fixed (anchors reading during RL)
    c.ppo.lora_rank = 0  # LoRA adapters of this rank instead of full fine-tuning (paper: 128)
    c.ppo.lora_alpha = 16.0  # LoRA scale alpha / rank (paper: 256)
    c.ppo.lora_targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,linear_1,linear_2"
    c.ppo.policy_loss = "ppo_clip"  # ppo_clip or pg
    c.ppo.value_loss = "clipped"  # clipped or mse

    c.eval = ml_collections.ConfigDict()
    c.eval.episodes = 500  # first episodes of this many envs
    c.eval.temperature = 0.2  # sampling temperature (<= 0: greedy)
    c.eval.max_steps = 10  # env steps per env (NumberLine truncates at 10)
    c.eval.every = 50  # PPO iterations between evaluations (0: only before and after PPO)

    c.log_every = 5  # PPO iterations between console lines / TensorBoard scalars
    c.checkpoint_every = 20  # PPO iterations between checkpoints
    c.keep_checkpoints = 3  # newest checkpoints kept
    c.mesh = ""  # "data,fsdp,tensor" device counts, e.g. "4,2,1"; "": one device
    c.require_checkpoint = False  # True: refuse to start without model.checkpoint (big models)
    c.fast_compile = False  # XLA optimisation level 0: compiles faster, runs slower (tests)
    return c
