"""A seconds-scale single-turn config for tests and smoke runs (learns nothing useful).

python -m rlvlm_jax.train_single --config experiments/suite_test.py --workdir /tmp/suite_test
"""

import ml_collections

from rlvlm_jax.config_files import load_sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = load_sibling(__file__, "suite_tiny.py").get_config(arg)
    test = load_sibling(__file__, "numberline_test.py").get_config()
    c.image_size = test.image_size  # 56 px: NumberLine's text is legible
    c.model = test.model  # the tests' tiny random model
    c.pretrain = test.pretrain  # disabled: from random weights
    c.max_new_tokens = 48  # the worked solutions fit (a random model never ends early)
    c.data.suite_kinds = "numberline_steps"  # the kind drawn at 56 px
    c.data.train_size = 16
    c.data.eval_size = 4
    c.sft.steps = 2
    c.sft.batch_size = 4
    c.rl.epochs = 1
    c.rl.iterations_per_epoch = 2
    c.rl.prompts_per_batch = 4 if arg in ("grpo", "rloo") else 8
    c.rl.lr = 1e-3  # large enough that one update visibly moves the params
    c.eval.pass_k = 2
    c.eval.batch_size = 4
    c.log_every = 1
    c.fast_compile = True  # tests: compile time dominates
    return c
