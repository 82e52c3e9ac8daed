"""gym_cards compatibility: the original ids as aliases, batched text fields, original info."""

import functools
import re

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.wrappers.purerl import LogWrapper

import rlvlm_jax.envs as envs
from rlvlm_jax.envs import formula as F
from rlvlm_jax.envs.blackjack import BlackjackState
from rlvlm_jax.envs.formula_env import FormulaState
from rlvlm_jax.envs.original_info import KEYS, OriginalInfoWrapper, original_info, to_original
from rlvlm_jax.envs.tasks import TASKS, get_task

FAST_COMPILE = {"xla_backend_optimization_level": 0}  # integer games: same results, faster compile
NUM_ENVS, NUM_STEPS = 16, 20  # 320 random-play states per task


def small_env(task):
    return envs.make(task, image_size=envs.TASKS[task].min_image_size())[0]


# ------------------------------------------------------------------------------------- aliases
@pytest.mark.parametrize("task", list(TASKS))
def test_original_ids_are_aliases_everywhere(task):
    gym_id = TASKS[task].gym_id
    assert gym_id == f"gym_cards/{task}-v0" and envs.GYM_IDS[task] == gym_id
    assert get_task(gym_id) is TASKS[task]
    env, params = envs.make(gym_id, image_size=envs.TASKS[task].min_image_size())
    assert type(env) is envs.TASKS[task] and env.name == task  # the canonical name stays ours
    env, params = gymnax.make(gym_id, image_size=envs.TASKS[task].min_image_size())
    assert type(env) is envs.TASKS[task] and env.name == task and params == env.default_params
    assert gymnax.registered_envs.count(gym_id) == 1


def test_unknown_names_list_every_form():
    names = re.escape("['Blackjack', 'EZPoints', 'NumberLine', 'Points24']")
    with pytest.raises(ValueError, match=f"unknown task 'gym_cards/Poker-v0'; .*{names}"):
        envs.make("gym_cards/Poker-v0")
    for call, error in ((envs.make, ValueError), (get_task, KeyError)):
        with pytest.raises(error) as info:
            call("Poker")
        text = str(info.value)
        for spec in TASKS.values():
            assert repr(spec.gymnax_id) in text and repr(spec.gym_id) in text, text
    with pytest.raises(KeyError, match="unknown task 'gym_cards/numberline-v0'"):
        get_task("gym_cards/numberline-v0")  # case-sensitive, like the original's registry


# ---------------------------------------------------------------------------- random play
@functools.cache
def played(task):
    """Random play through `OriginalInfoWrapper`: (state before, state after, info, the keys
    `original_info` gives for the state before and after), flattened to NUM_STEPS * NUM_ENVS rows;
    formulas get blanks, Blackjack hands grow. One compile per task serves every test here."""
    env = small_env(task)
    wrapped = OriginalInfoWrapper(env)
    of_states = jax.vmap(functools.partial(original_info, env))

    def run(key):
        k_reset, k_run = jax.random.split(key)
        _, state = jax.vmap(wrapped.reset)(jax.random.split(k_reset, NUM_ENVS))

        def body(state, key):
            k_act, k_step = jax.random.split(key)
            action = jax.random.randint(k_act, (NUM_ENVS,), 0, env.num_actions)
            _, nxt, _, _, _, info = jax.vmap(wrapped.step)(
                jax.random.split(k_step, NUM_ENVS), state, action
            )
            info.pop("final_observation")
            return nxt, (state, nxt, info, of_states(state), of_states(nxt))

        return jax.lax.scan(body, state, jax.random.split(k_run, NUM_STEPS))[1]

    out = jax.device_get(jax.jit(run, compiler_options=FAST_COMPILE)(jax.random.key(3)))
    rows = NUM_STEPS * NUM_ENVS
    return env, jax.tree.map(lambda x: x.reshape((rows,) + x.shape[2:]), out)


# ------------------------------------------------------------------------ batched text fields
@pytest.mark.parametrize("task", list(TASKS))
def test_text_fields_batch_equals_the_single_state_rows(task):
    env, (_, after, *_) = played(task)
    after = jax.device_put(after)  # on the device, as a rollout holds it
    batch = env.text_fields_batch(after)
    single = [env.text_fields(jax.tree.map(lambda x, i=i: x[i], after)) for i in range(len(batch))]
    assert len(batch) == NUM_STEPS * NUM_ENVS
    assert batch == single
    for a, b in zip(batch, single, strict=True):  # same types too (int is not bool)
        assert {k: type(v) for k, v in a.items()} == {k: type(v) for k, v in b.items()}
    # The random states cover the hard cases.
    if TASKS[task].has_formula:
        assert any(" " in f["formula"] for f in batch)  # blanks (invalid number picks)
        assert any(f["formula"] and " " not in f["formula"] for f in batch)  # clean mid-episode
        assert any(not f["formula"] for f in batch)  # fresh episodes
    if task == "Blackjack":
        assert max(len(f["player_cards"]) for f in batch) >= 4
        assert any(f["usable_ace"] for f in batch)
    if task == "NumberLine":
        assert len({(f["position"], f["goal"]) for f in batch}) >= 20


@pytest.mark.parametrize("task", ["Points24", "Blackjack"])
def test_text_fields_batch_makes_one_transfer_and_no_device_work(task, monkeypatch):
    env, (_, after, *_) = played(task)
    after = jax.device_put(after)  # on the device, as a rollout holds it
    expected = env.text_fields_batch(after)
    calls = []
    device_get = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: calls.append(1) or device_get(x))
    with jax.transfer_guard_host_to_device("disallow"):  # any per-row jnp work would need one
        assert env.text_fields_batch(after) == expected
    assert len(calls) == 1
    assert env.text_fields_batch(jax.device_get(after)) == expected  # host states work too


def test_text_fields_batch_needs_one_batch_axis():
    env, (_, after, *_) = played("NumberLine")
    one = jax.tree.map(lambda x: x[0], after)
    with pytest.raises(ValueError, match="one leading batch axis.*use text_fields"):
        env.text_fields_batch(one)
    two = jax.tree.map(lambda x: x.reshape((NUM_STEPS, NUM_ENVS) + x.shape[1:]), after)
    with pytest.raises(ValueError, match=r"state.time has shape \(20, 16\)"):
        env.text_fields_batch(two)


# ------------------------------------------------------------------------ original info
@pytest.mark.parametrize("task", list(TASKS))
def test_original_info_describes_the_state_the_step_reached(task):
    env, (before, after, info, _, from_state) = played(task)
    assert set(info) == {"terminated", "truncated", "bad_action"} | set(KEYS[task])
    for value in jax.tree.leaves({k: info[k] for k in KEYS[task]}):
        assert value.dtype == np.int32
    done = info["terminated"] | info["truncated"]
    assert done.any() and (~done).any()
    # Without a reset the state after the step is the state it reached: the keys describe it.
    for key in KEYS[task]:
        np.testing.assert_array_equal(info[key][~done], np.asarray(from_state[key])[~done])
    fields = env.text_fields_batch(after)
    for i in np.flatnonzero(~done):
        row = to_original(task, jax.tree.map(lambda x, i=i: x[i], info))
        f = fields[i]
        if task == "NumberLine":
            assert row == {"Target": f["goal"], "Current": f["position"]}
        elif task == "Blackjack":
            assert [face for _, face, _ in row["Player Card"]] == [
                "A" if r == 1 else "JQK"[r - 11] if r > 10 else str(r) for r in f["player_cards"]
            ]
            assert row["Dealer Card"][0][0] == f["dealer_up_value"]
        else:
            assert row["Numbers"] == [min(r, 10) for r in f["cards"]]
            assert [str(t) for t in row["Formula"]] == f["formula"]
            assert [c[1:] for c in row["Cards"]] == ["A23456789TJQK"[r - 1] for r in f["cards"]]
    # After an episode ended, the keys describe the finished episode, not the fresh one.
    b = jax.tree.map(lambda x: x[done], before)
    d = {k: v[done] for k, v in info.items()}
    if task == "NumberLine":
        np.testing.assert_array_equal(d["Target"], b.goal)
        assert np.all((d["Current"] == d["Target"]) == d["terminated"])
        assert np.all(np.abs(d["Current"] - b.position) <= 1)
    elif task == "Blackjack":
        np.testing.assert_array_equal(d["Dealer Card"][:, 0, 1], b.dealer_rank)
        np.testing.assert_array_equal(d["Dealer Card"][:, 0, 2], b.dealer_suit)
        count = (d["Player Card"][:, :, 0] > 0).sum(axis=1)
        kept = np.arange(10)[None, :] < b.num_player_cards[:, None]
        np.testing.assert_array_equal(d["Player Card"][:, :, 1] * kept, b.player_ranks * kept)
        short = b.num_player_cards < 10  # (the 11th card is not kept)
        hit, stood = count == b.num_player_cards + 1, count == b.num_player_cards
        assert np.all((hit ^ stood)[short])
        assert np.all(d["dealer_total"][stood] >= 17)  # the dealer drew to 17 or more
        values = d["Player Card"][:, :, 0].sum(axis=1)
        assert np.all(values[hit] > 21)  # a hit ends the hand only by busting
    else:
        np.testing.assert_array_equal(d["Cards"][:, :, 0], b.ranks)
        np.testing.assert_array_equal(d["Cards"][:, :, 1], b.suits)
        # "=" and the over-length rule do not append: the formula is the one that was judged.
        np.testing.assert_array_equal(d["Formula"], b.formula)


@pytest.mark.parametrize("task", list(TASKS))
def test_original_info_of_reset_states(task):
    env, (before, _, _, info, _) = played(task)
    fresh = np.flatnonzero(np.asarray(before.time) == 0)  # the first states and auto-resets
    assert len(fresh) >= NUM_ENVS
    fields = env.text_fields_batch(jax.tree.map(lambda x: x[fresh], before))
    for i, f in zip(fresh, fields, strict=True):
        row = to_original(task, jax.tree.map(lambda x, i=i: x[i], info))
        if task == "NumberLine":
            assert row == {"Target": f["goal"], "Current": f["position"]}
        elif task == "Blackjack":
            assert len(row["Player Card"]) == 2 and len(row["Dealer Card"]) == 1
            total = info["dealer_total"][i]
            assert 4 <= total <= 21
        else:
            assert row["Formula"] == [] and row["Numbers"] == [min(r, 10) for r in f["cards"]]


def test_to_original_spells_cards_and_tokens_like_the_original():
    env = small_env("EZPoints")
    formula = np.zeros(6, np.int32)
    formula[:4] = [3, F.TIMES, F.BLANK, 4]
    state = FormulaState(time=4, canvas=None, ranks=jnp.array([10, 13]), suits=jnp.array([1, 3]),
                         formula=jnp.asarray(formula), length=4)
    assert to_original("gym_cards/EZPoints-v0", original_info(env, state)) == {
        "Cards": ["HT", "CK"],  # hearts ten, clubs king (our suits 0..3 are S, H, D, C)
        "Numbers": [10, 10],
        "Formula": [3, "*", " ", 4],  # numbers as ints, operators and blanks as strings
    }
    env = small_env("Blackjack")
    ranks = np.zeros(10, np.int32)
    ranks[:3] = [1, 12, 5]
    state = BlackjackState(
        time=1, canvas=None, player_ranks=jnp.asarray(ranks),
        player_suits=jnp.asarray(np.array([0, 2, 3] + [0] * 7, np.int32)),
        num_player_cards=3, player_sum=16, player_ace=True, dealer_rank=11, dealer_suit=1,
        dealer_sum=17, dealer_ace=True,
    )
    info = original_info(env, state)
    assert int(info["dealer_total"]) == 17  # 17 with the ace as 1 (11 would bust)
    assert to_original("Blackjack", info) == {
        "Dealer Card": [(10, "J", "H")],
        "Player Card": [(1, "A", "S"), (10, "Q", "D"), (5, "5", "C")],
    }


def test_wrapper_changes_nothing_else_and_needs_the_card_env():
    env = small_env("NumberLine")
    wrapped = OriginalInfoWrapper(env)
    assert wrapped.num_actions == 2 and wrapped.name == "NumberLine"  # the env's attributes
    _, state = wrapped.reset(jax.random.key(0))
    for i in range(6):
        key = jax.random.key(i)
        ours = env.step(key, state, i % 2)
        theirs = wrapped.step(key, state, i % 2)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs[:5] + (
                {k: v for k, v in theirs[5].items() if k not in KEYS["NumberLine"]},)),
                strict=True):
            np.testing.assert_array_equal(a, b)
        state = ours[1]
    with pytest.raises(ValueError, match="outside the action space"):
        wrapped.step(jax.random.key(0), state, 2)
    with pytest.raises(TypeError, match="needs a card env.*OriginalInfoWrapper first"):
        OriginalInfoWrapper(LogWrapper(env))
