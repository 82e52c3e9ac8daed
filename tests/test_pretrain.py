"""The reader's pretraining: captions state the env's text fields, the reading score counts facts,
and the exported reader is a checkpoint a task run starts from."""

import json
import os

import jax
import numpy as np
import pytest

import rlvlm_jax.envs as envs
from rlvlm_jax import pretrain
from rlvlm_jax.build import build
from rlvlm_jax.config_files import load
from rlvlm_jax.envs import formula as F
from rlvlm_jax.envs.blackjack import BlackjackState
from rlvlm_jax.envs.formula_env import FormulaState
from rlvlm_jax.envs.numberline import NumberLineState
from rlvlm_jax.models.conversion import config_to_hf, load_hf_checkpoint
from rlvlm_jax.rl import policy as policy_lib
from rlvlm_jax.rl import sft_data
from rlvlm_jax.text.tokenizer import build_card_tokenizer
from tests.rl.test_sft import ROOT

i32 = np.int32
NO_PICTURE = np.zeros((1, 1, 3), np.uint8)  # text_fields never looks at the picture


def _formula(codes, width):
    return np.asarray(list(codes) + [0] * (width - len(codes)), i32)


def hand_states():
    """A few states of every task, made by hand so that face cards, blanks and soft hands occur
    (task -> (env, [state, ...]))."""
    nl = envs.make("NumberLine", image_size=55)[0]
    ez = envs.make("EZPoints", image_size=76)[0]
    p24 = envs.make("Points24", image_size=89)[0]
    bj = envs.make("Blackjack", image_size=101)[0]
    f = F.TEXT_CODE
    blank = F.BLANK
    return {
        "NumberLine": (nl, [NumberLineState(time=i32(0), canvas=NO_PICTURE, position=i32(p),
                                            goal=i32(g)) for p, g in ((0, 5), (4, 3))]),
        "EZPoints": (ez, [
            FormulaState(time=i32(0), canvas=NO_PICTURE, ranks=np.asarray([13, 2], i32),
                         suits=np.asarray([0, 1], i32), formula=_formula([], 6), length=i32(0)),
            FormulaState(time=i32(3), canvas=NO_PICTURE, ranks=np.asarray([2, 10], i32),
                         suits=np.asarray([1, 3], i32),
                         formula=_formula([2, blank, f["+"], 10, blank], 6), length=i32(5)),
        ]),
        "Points24": (p24, [
            FormulaState(time=i32(5), canvas=NO_PICTURE, ranks=np.asarray([1, 12, 8, 3], i32),
                         suits=np.asarray([0, 1, 2, 3], i32),
                         formula=_formula([f["("], 8, f["/"], blank, f["-"]], 21), length=i32(5)),
        ]),
        "Blackjack": (bj, [
            BlackjackState(time=i32(1), canvas=NO_PICTURE,
                           player_ranks=np.asarray([1, 6, 3] + [0] * 7, i32),
                           player_suits=np.zeros(10, i32), num_player_cards=i32(3),
                           player_sum=i32(10), player_ace=np.bool_(True), dealer_rank=i32(12),
                           dealer_suit=i32(0), dealer_sum=i32(15), dealer_ace=np.bool_(False)),
            BlackjackState(time=i32(0), canvas=NO_PICTURE,
                           player_ranks=np.asarray([13, 1] + [0] * 8, i32),
                           player_suits=np.zeros(10, i32), num_player_cards=i32(2),
                           player_sum=i32(11), player_ace=np.bool_(True), dealer_rank=i32(1),
                           dealer_suit=i32(0), dealer_sum=i32(8), dealer_ace=np.bool_(True)),
        ]),
    }


def test_caption_texts():
    states = hand_states()
    texts = {t: [pretrain.caption_text(t, env.text_fields(s)) for s in ss]
             for t, (env, ss) in states.items()}
    assert texts == {
        "NumberLine": ["The current number is 0 and the target number is 5.",
                       "The current number is 4 and the target number is 3."],
        "EZPoints": ["The cards are K and 2. The formula is empty",
                     "The cards are 2 and 10. The formula is 2 . + 10"],  # a trailing blank
                                                                       # draws nothing
        "Points24": ["The cards are A, Q, 8 and 3. The formula is ( 8 / . -"],
        "Blackjack": ["My cards are A, 6 and 3. The dealer shows 10.",  # the dealer's Q
                      "My cards are K and A. The dealer shows A."],
    }


def _name(rank):
    return "A" if rank == 1 else {11: "J", 12: "Q", 13: "K"}.get(rank, str(rank))


def _total(names):
    """Blackjack's (total, usable ace) of a hand given by card names."""
    total = sum(1 if n == "A" else 10 if n in "JQK" else int(n) for n in names)
    soft = "A" in names and total + 10 <= 21
    return total + 10 * soft, soft


def _check_facts(task, fields, facts):
    """The caption's facts are the text fields (the formula as drawn: no blanks; Blackjack's
    total and usable ace follow from the cards shown)."""
    if task == "NumberLine":
        assert facts == {"current": fields["position"], "target": fields["goal"]}
    elif task == "Blackjack":
        cards = fields["player_cards"]
        names = [facts[f"card{i + 1}"] for i in range(len(cards))]
        assert names == [_name(r) for r in cards] and facts["num_cards"] == len(cards)
        assert _total(names) == (fields["player_sum"], fields["usable_ace"])
        up = fields["dealer_up_value"]
        assert facts["dealer"] == ("A" if up == 1 else str(up))
    else:
        cards = fields["cards"]
        assert [facts[f"card{i + 1}"] for i in range(len(cards))] == [_name(r) for r in cards]
        shown = [t if t.strip() else "." for t in fields["formula"]]
        while shown and shown[-1] == ".":  # a trailing blank draws nothing
            shown.pop()
        assert facts["formula"].split() == shown
    assert len(facts) == {"NumberLine": 2, "EZPoints": 3, "Points24": 5}.get(
        task, 2 + len(fields.get("player_cards", [])))


def test_captions_state_the_text_fields():
    for task, (env, states) in hand_states().items():
        for s in states:
            fields = env.text_fields(s)
            facts = pretrain.caption_facts(task, fields)
            _check_facts(task, fields, facts)
            assert pretrain.parse_caption(task, pretrain.caption_text(task, fields)) == facts


@pytest.mark.slow
def test_captions_of_visited_states():
    """The same on states the envs visit (compiles each task's rollout: ~25 s)."""
    for i, task in enumerate(envs.TASKS):
        env = envs.make(task, image_size=envs.TASKS[task].min_image_size())[0]
        states = sft_data.visited_states(env, 64, jax.random.key(i))
        for fields in pretrain.task_fields(env, states):
            facts = pretrain.caption_facts(task, fields)
            _check_facts(task, fields, facts)
            assert pretrain.parse_caption(task, pretrain.caption_text(task, fields)) == facts


def test_reading_score():
    env, states = hand_states()["Points24"]
    truth = pretrain.caption_facts("Points24", env.text_fields(states[0]))  # 4 cards, formula
    right = "The cards are A, Q, 8 and 3. The formula is ( 8 / . -"
    perfect = pretrain.score_reading("Points24", [truth], [right])
    assert perfect["field_accuracy"] == 1.0 and perfect["caption_accuracy"] == 1.0
    one_card = pretrain.score_reading("Points24", [truth, truth],
                                      [right, right.replace("A, Q", "A, K")])
    assert one_card["field_accuracy"] == pytest.approx(9 / 10)
    assert one_card["caption_accuracy"] == 0.5
    assert one_card["fields"] == {"cards": 7 / 8, "formula": 1.0}
    garbled = pretrain.score_reading("Points24", [truth], ["The cards are A and Q"])
    assert garbled["field_accuracy"] == 0.0  # no full stop after the cards: nothing read
    extra = pretrain.score_reading("Points24", [truth],
                                   ["The cards are A, Q, 8, 3 and 2. The formula is ( 8 / . -"])
    assert extra["field_accuracy"] == 1.0 and extra["caption_accuracy"] == 0.0

    env, states = hand_states()["Blackjack"]
    truth = pretrain.caption_facts("Blackjack", env.text_fields(states[0]))
    got = pretrain.score_reading("Blackjack", [truth, truth],
                                 ["My cards are A, 6 and 2. The dealer shows 10.",
                                  "My cards are A and 6. The dealer shows 9."])
    assert got["field_accuracy"] == pytest.approx(6 / 10)  # of 2 x 5 facts
    assert got["fields"] == {"cards": 4 / 6, "num_cards": 0.5, "dealer": 0.5}


def test_split_batch():
    assert pretrain.split_batch(64, [1, 2, 3, 2]) == (8, 16, 24, 16)
    assert sum(pretrain.split_batch(10, [1, 1, 1])) == 10
    with pytest.raises(ValueError):
        pretrain.split_batch(2, [1, 1, 1])


def tiny_config():
    c = load(os.path.join(ROOT, "experiments", "pretrain_tiny.py"))
    c.tasks = "NumberLine"
    c.image_size = 56
    c.model.patch_size = 14
    c.model.vision_hidden = c.model.text_hidden = 32
    c.model.vision_mlp = c.model.text_mlp = 64
    c.model.vision_layers = c.model.text_layers = 1
    c.data.states_per_task = 32
    c.data.weights = "1"
    c.train.steps = 2
    c.train.batch_size = 4
    c.train.eval_every = 0
    c.eval.states_per_task = 4
    c.eval.batch_size = 4
    c.max_new_tokens = 16
    c.fast_compile = True
    return c


def _task_config(checkpoint):
    task = load(os.path.join(ROOT, "experiments", "numberline_tiny.py"))
    task.model.checkpoint = checkpoint
    task.image_size = 56
    task.sft.steps = 0
    return task


def test_pretrain_writes_a_reader_a_task_starts_from(tmp_path):
    """A few pretraining steps: the workdir holds the reading report and a checkpoint (model and
    tokenizer) that a task config builds from, with the reader's architecture."""
    c = tiny_config()
    out = str(tmp_path / "reader")
    lines = []
    results = pretrain.pretrain(c, out, log=lines.append)
    assert set(results["reading"]) == {"NumberLine"} and results["steps"] == 2
    with open(os.path.join(out, pretrain.READING_FILE)) as f:
        assert set(json.load(f)["reading"]["NumberLine"]["fields"]) == {"current", "target"}
    assert any(line.startswith("[reading] NumberLine: fields") for line in lines)
    cfg, exported = load_hf_checkpoint(out)
    built = policy_lib.llava_config(c.model, c.image_size, pretrain.load_tokenizer(out))
    assert config_to_hf(cfg) == config_to_hf(built)  # (head_dim: implicit here, explicit there)
    run = build(_task_config(out), str(tmp_path / "run"))
    assert run.cfg == cfg and cfg.num_image_tokens == 16
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.init_params["vlm"]), exported)


def test_export_then_build_round_trips(tmp_path):
    """Params exported by `export_reader` are exactly the params `build` starts a task from."""
    c = tiny_config()
    build_card_tokenizer(str(tmp_path / "tok"), c.tokenizer.vocab_size)
    tokenizer = pretrain.load_tokenizer(str(tmp_path / "tok"))
    cfg = policy_lib.llava_config(c.model, c.image_size, tokenizer)
    _, params = policy_lib.init_policy(cfg, c.model)
    out = str(tmp_path / "reader")
    pretrain.export_reader(params, cfg, tokenizer, out)
    run = build(_task_config(out), str(tmp_path / "run"))
    assert config_to_hf(run.cfg) == config_to_hf(cfg)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.init_params["vlm"]),
                 jax.device_get(params["vlm"]))


# ------------------------------------------------------------------------------------ cached
def _task_with_recipe():
    """numberline_test.py with its pretrain recipe switched on and shrunk to seconds."""
    task = load(os.path.join(ROOT, "experiments", "numberline_test.py"))
    r = tiny_config()
    task.pretrain.enabled = True
    for name in pretrain.RECIPE_FIELDS:
        task.pretrain[name] = r[name]
    return task


def test_reader_is_built_on_first_use_then_reused(tmp_path, monkeypatch):
    """A task config with a recipe and no checkpoint: the first run builds the reader into the
    cache ($RLVLM_CACHE) and starts from it; the next run (another seed) reuses it unchanged;
    another recipe is another reader; a failed build leaves nothing that looks complete."""
    from rlvlm_jax.train import start_from_reader

    monkeypatch.setenv("RLVLM_CACHE", str(tmp_path / "cache"))
    task = _task_with_recipe()
    lines = []
    path = pretrain.ensure_reader(task, log=lines.append)
    assert path.startswith(str(tmp_path / "cache")) and "building" in lines[0]
    assert lines[-1] == f"[pretrain] the reader is {path}"  # not the private build folder
    assert os.path.isfile(os.path.join(path, pretrain.READING_FILE))
    stamp = os.path.getmtime(os.path.join(path, "model.safetensors"))

    other_seed = _task_with_recipe()
    other_seed.seed = 5  # the run's seed is not the reader's
    start_from_reader(other_seed)
    assert other_seed.model.checkpoint == path
    assert os.path.getmtime(os.path.join(path, "model.safetensors")) == stamp
    run = build(other_seed, str(tmp_path / "run"))  # starts from the cached weights
    _, exported = load_hf_checkpoint(path)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.init_params["vlm"]), exported)

    longer = _task_with_recipe()
    longer.pretrain.train.steps = 3
    assert pretrain.reader_path(longer) != path

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(pretrain, "pretrain", boom)
    with pytest.raises(RuntimeError):
        pretrain.ensure_reader(longer, log=lines.append)
    assert sorted(os.listdir(os.path.dirname(path))) == [os.path.basename(path)]


def test_recipe_and_checkpoint_mismatches_are_refused(tmp_path):
    """A recipe that does not read the run's task, and a tokenizer.path that is not the
    checkpoint's tokenizer: one-line errors before anything heavy runs."""
    from rlvlm_jax.build import validate_config

    task = _task_with_recipe()
    task.pretrain.tasks = "Blackjack"
    task.pretrain.data.weights = "1"
    task.image_size = 112  # Blackjack's pictures need >= 101 px
    with pytest.raises(ValueError, match="pretrain.tasks 'Blackjack' does not include "
                                         "NumberLine"):
        validate_config(task)

    c = tiny_config()
    build_card_tokenizer(str(tmp_path / "tok"), c.tokenizer.vocab_size)
    tokenizer = pretrain.load_tokenizer(str(tmp_path / "tok"))
    cfg = policy_lib.llava_config(c.model, c.image_size, tokenizer)
    _, params = policy_lib.init_policy(cfg, c.model)
    pretrain.export_reader(params, cfg, tokenizer, str(tmp_path / "reader"))
    build_card_tokenizer(str(tmp_path / "small"), 400)
    task = _task_config(str(tmp_path / "reader"))
    task.tokenizer.path = str(tmp_path / "small")
    with pytest.raises(ValueError, match="is not the tokenizer of config.model.checkpoint"):
        validate_config(task)
    task.tokenizer.path = str(tmp_path / "tok")  # the same tokenizer, another copy: fine
    validate_config(task)
    task.image_size = 112
    with pytest.raises(ValueError, match="the checkpoint's vision tower takes 56 px"):
        validate_config(task)


def test_task_data_holds_the_picture_regions_only():
    """A formula env's region_variants also names its formula line (for the original picture
    style's text run); the pretraining data keeps the picture's regions, one int per state."""
    env, _ = envs.make("EZPoints", image_size=76)
    variants, texts = pretrain.make_task_data(env, 16, jax.random.key(0), (0.3, 1.0))
    assert set(variants) == {r.name for r in env.picture.regions} and len(texts) == 16
    assert all(v.shape == (16,) for v in variants.values())


def test_the_default_model_family_does_not_rename_cached_readers():
    """`model.family = "llava"` (added after readers were cached) is left out of the recipe, so
    a task config with or without it names the same reader."""
    c = load(os.path.join(ROOT, "experiments", "numberline_tiny.py"))
    with_family = pretrain.reader_path(c)
    assert "family" not in pretrain.reader_config(c).model
    del c.model["family"]
    assert pretrain.reader_path(c) == with_family
