"""RL4VLM's NumberLine run with LLaVA-v1.6-Mistral-7B: the paper's settings, for a TPU/GPU pod.

python -m rlvlm_jax.train --config experiments/llava_mistral_7b_numberline.py \
    --workdir gs://... --config.model.checkpoint=/path/to/llava-sft-hf

Paper settings (rl4vlm_method.md) and where we deliberately differ:
- one 336 px crop, 576 image tokens, CLIP layer -2, class token dropped (as the paper);
- value head 4096 -> 1024 -> 512 -> 1 on the last prompt token (as the paper);
- lambda 0.5, temperature 0.2, max 256 new tokens, gamma 0.9, GAE 0.95, 4 epochs, clip 0.1,
  value clip 0.1, Adam 1e-5 cosine to 1e-9, 512 env steps per update (as the paper);
- gradient clipping is *applied* (the original requested 0.01 but never applied it); we clip the
  global norm at 1.0;
- truncation is bootstrapped from the final observation's value (the original treated it as
  termination; set ppo.truncation_as_termination=True to reproduce);
- the action span is found from the text (the original's hard-coded ids never matched Mistral);
- LoRA r=128, alpha=256 on the language model's and projector's linear maps, vision tower frozen,
  value head trained fully (as the paper), but without LoRA dropout (the paper: 0.05) so that
  the PPO ratio is exactly 1 before an update; --config.ppo.lora_rank=0 fine-tunes fully;
- bf16 compute with float32 params and Adam moments.
Environment pictures are rendered at 336 px directly (no resize), prompts are the original bytes.
"""

import ml_collections

from rlvlm_jax.config_files import load_sibling


def _base():
    return load_sibling(__file__, "numberline_tiny.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = _base().get_config(arg)
    c.image_size = 336  # CLIP-L/336's input; the env draws at this size
    c.template = "llava_v1"  # the original prompts, byte for byte
    c.max_new_tokens = 256  # paper
    c.model.checkpoint = ""  # REQUIRED: an HF LLaVA-v1.6-Mistral-7B (SFT) directory
    c.pretrain.enabled = False  # the tiny reader's recipe does not apply to a 7B model
    c.require_checkpoint = True  # a random 7B is useless and out of memory: refuse without one
    c.model.init = "normal"  # unused with a checkpoint
    c.model.pixels = "clip"  # CLIP mean/std, as the pretrained tower expects
    c.model.dtype = "bfloat16"  # compute
    c.model.param_dtype = "float32"  # master copy (paper: bf16 weights, fp32 master)
    c.model.remat = True  # rematerialise layers: activations of 256-token answers
    c.model.value_hidden = (1024, 512)  # paper
    c.model.max_positions = 32768  # Mistral's context
    c.sft.steps = 0  # start from the released/own SFT checkpoint
    c.ppo.iterations = 30  # 15,000 env steps / 512 per update (paper, per process)
    c.ppo.num_envs = 16  # environments sampled together (paper: 1 per GPU)
    c.ppo.num_steps = 32  # 16 x 32 = 512 env steps per update (paper)
    c.ppo.epochs = 4  # paper
    c.ppo.minibatches = 4  # 128 samples per optimiser step (paper: 128 accumulated)
    c.ppo.micro_batches = 32  # 4 samples per forward/backward
    c.ppo.lr = 1e-5  # paper
    c.ppo.temperature = 0.2  # paper (the tiny NumberLine samples its rollouts at 1.0)
    c.ppo.lr_end = 1e-9  # paper (cosine)
    c.ppo.clip_eps = 0.1  # paper
    c.ppo.value_clip_eps = 0.1  # paper
    c.ppo.grad_clip = 1.0  # applied (paper: requested 0.01, not applied)
    c.ppo.freeze_vision = True  # paper: the vision tower was effectively frozen
    c.ppo.lora_rank = 128  # paper
    c.ppo.lora_alpha = 256.0  # paper
    c.eval.episodes = 500  # as the tiny run
    c.eval.every = 10  # PPO iterations between evaluations
    c.log_every = 1  # every iteration
    c.checkpoint_every = 5  # iterations
    return c
