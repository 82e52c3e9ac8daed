"""Pretraining a tiny LLaVA that reads all four card tasks (the "LLaVA" the task runs start from).

python -m rlvlm_jax.pretrain --config experiments/pretrain_tiny.py --workdir outputs/reader

Task runs do not need this command: their configs embed `recipe()` as `config.pretrain`, and
`rlvlm_jax.train` builds the reader on first use into the cache ($RLVLM_CACHE, else
~/.cache/rlvlm_jax) and reuses it afterwards. This command builds the same reader into a workdir
of your choice (same recipe, tokenizer, model and picture size -> the same weights).

Captioning on pictures the environments draw: "<image>\\ndescribe" -> the visible facts of the
state in the words of the task demonstrations ("The cards are 7, K, 9 and 8. The formula is
( 8 / . -"), trained with the SFT teacher-forced NLL plus an auxiliary reading head (captions
alone never taught the formula; see rlvlm_jax/pretrain.py). One reader for all tasks: one 112 px
picture size (Blackjack's cards need >= 101 px), patch 14 -> 64 image tokens. The workdir
becomes a transformers LLaVA directory (config.json, model.safetensors, tokenizer) plus
reading.json; a task run starts from it with --config.model.checkpoint=DIR.
"""

import ml_collections

from rlvlm_jax.config_files import load_sibling


def recipe() -> ml_collections.ConfigDict:
    """The pretraining recipe the task configs embed as `config.pretrain`."""
    c = ml_collections.ConfigDict()
    c.enabled = True  # runs without model.checkpoint start from this reader (False: scratch)
    c.tasks = "NumberLine,EZPoints,Points24,Blackjack"  # tasks whose pictures are captioned
    c.seed = 0  # every random draw of the reader (init, data, batches); not the task run's seed
    c.prompt = "describe"  # the user turn after <image> ("USER: <image>\ndescribe ASSISTANT:")
    c.max_new_tokens = 48  # caption limit (the longest, Points24 with 21 formula tokens, is ~40)

    c.data = ml_collections.ConfigDict()
    c.data.states_per_task = 16384  # training states per task (pictures drawn per batch)
    c.data.explore = "0.3,1.0"  # random-action shares of the behaviour policies (equal parts)
    c.data.weights = "1,2,3,2"  # batch share per task, in c.tasks order (harder tasks more)

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1200  # optimiser steps (~0.42 s each on 2 idle cores)
    c.train.batch_size = 64  # captions per step (split over the tasks by data.weights)
    c.train.lr = 2e-3  # AdamW peak learning rate
    c.train.warmup = 50  # linear warm-up steps, then cosine to lr / 10
    c.train.weight_decay = 0.0  # AdamW decoupled weight decay
    c.train.grad_clip = 1.0  # global-norm clipping
    c.train.reading_head = 1.0  # weight of the auxiliary reading head's loss (0: captions only)
    c.train.log_every = 100  # steps between console lines
    c.train.eval_every = 400  # steps between quick reading checks (0: only at the end)
    c.train.eval_quick = 64  # held-out states per task of a quick check

    c.eval = ml_collections.ConfigDict()
    c.eval.explore = 0.3  # random-action share of the held-out states (as the SFT data's)
    c.eval.states_per_task = 512  # held-out states per task of the final reading evaluation
    c.eval.batch_size = 256  # greedy captions per compiled call
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The reader of experiments/numberline_tiny.py (every tiny task config shares it)."""
    del arg
    from rlvlm_jax.pretrain import reader_config

    return reader_config(load_sibling(__file__, "numberline_tiny.py").get_config())
