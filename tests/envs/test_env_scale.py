"""Slow: the four envs against gym_cards.md over 2048 envs x 512 steps (> 10^6 steps) per task.

One compiled `lax.scan` per task (vmapped `env.step` with auto-reset, default 300 px pictures)
records every step's action, reward, flags and next logical state, and one picture per step (a
random env). The host then checks, for every one of the 1,048,576 steps:

- rewards finite and in the task's set (and every value of the set occurs), never both
  terminated and truncated, no out-of-range action;
- the transition against a numpy re-implementation of the rules (NumberLine moves, rewards,
  10-step limit; the formula tasks' card-count rule, blank tokens, the "more than 5 / 20 tokens"
  rule, "=" judged by `formula.evaluate_host`; Blackjack draws, busts and dealer bookkeeping), and
  after every done step a fresh episode (time 0, valid reset state);
- state fields in range and consistent (positions, ranks, suits, formula padding, time == formula
  length, Blackjack totals equal to the shown cards, dealer hole card 1..10);
- 512 pictures (`state.canvas`) equal the host painter's picture of the same logical state.

Statistical laws (chi-square, fixed seeds, so the outcome is deterministic): reset states (the
initial ones and every auto-reset) against the laws of gym_cards.md, and Blackjack's hit and stand
outcomes against exact infinite-deck probabilities. Each chi-square test rejects at p < 1e-6, so a
correct env fails one with probability 1e-6 per test for a random seed; the file runs 11 such tests,
a false-alarm probability below 1.2e-5 in all. Their power, checked once on deliberately broken
copies of the envs (at a quarter of these sizes): a NumberLine goal moved mod 6 instead of mod 5,
Blackjack tens shown as "10", Points24 never dealing a king, soft 17 counted as 7 all fail
(p < 1e-80, or an outcome of probability 0).
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats  # a dependency of jax

import rlvlm_jax.envs as envs
from rlvlm_jax.envs import formula as F
from rlvlm_jax.envs.tasks import TASK_NAMES

NUM_ENVS = 2048
NUM_STEPS = 512
NUM_PICTURES = NUM_STEPS  # one random env's picture per step
ALPHA = 1e-6  # per chi-square test
SEEDS = {task: 1000 + i for i, task in enumerate(TASK_NAMES)}  # jax.random.key(seed) per task
REWARDS = {
    "NumberLine": {-1.0, 0.0, 1.0},
    "EZPoints": {-1.0, 0.0, 10.0},
    "Points24": {-1.0, 0.0, 10.0},
    "Blackjack": {-1.0, 0.0, 1.0},
}
FORMULA_TASKS = ("EZPoints", "Points24")
# Card values of the infinite deck [1..9, 10, 10, 10, 10]; shown ranks (10s as J/Q/K, uniformly).
VALUE_P = {v: Fraction(1, 13) for v in range(1, 10)} | {10: Fraction(4, 13)}
SHOWN_P = {r: Fraction(1, 13) for r in range(1, 10)} | {r: Fraction(4, 39) for r in (11, 12, 13)}


# ------------------------------------------------------------------------------------ policies
def _blank_skipping_oracle(env, state):
    """Continues the stored solution as if blank tokens were not there (gym_cards.md: a blank is
    a space that Python's eval skips), so "=" is pressed on solutions with blanks in them."""
    actions, solvable = env.solution_actions(state)
    codes = jnp.asarray(np.array(env.action_codes + (F.PAD,), np.int32))[actions]
    slots = env.max_tokens + 1
    filled = (jnp.arange(slots) < state.length) & (state.formula != F.BLANK)
    rank = jnp.clip(jnp.cumsum(filled) - 1, 0, slots - 1)
    on_path = jnp.all(~filled | (state.formula == codes[rank]))
    nxt = actions[jnp.minimum(jnp.sum(filled), slots - 1)]
    return jnp.where(solvable & on_path, nxt, env.equals_action).astype(jnp.int32)


def make_policy(env):
    """Per env style (index mod 4): 0 uniform random; 1 random or the oracle, half and half;
    2 the blank-skipping oracle (formula tasks; else the oracle) with 30% random; 3 the oracle
    with 10% random. Pure random play reaches the formula-length limit; the oracles win."""
    formula = env.task in FORMULA_TASKS

    def policy(key, state, style):
        k_u, k_a, k_o = jax.random.split(key, 3)
        u = jax.random.uniform(k_u)
        rand = jax.random.randint(k_a, (), 0, env.num_actions)
        oracle = env.oracle_action(k_o, state)
        skip = _blank_skipping_oracle(env, state) if formula else oracle
        mixed = jnp.where(style == 1, oracle, jnp.where(style == 2, skip, oracle))
        p_random = jnp.array([1.0, 0.5, 0.3, 0.1])[style]
        return jnp.where(u < p_random, rand, mixed).astype(jnp.int32)

    return policy


# ------------------------------------------------------------------------------------ rollout
def _logical(state, n):
    return state.replace(canvas=jnp.zeros((n,), jnp.uint8))  # the picture is recorded apart


@dataclasses.dataclass
class Run:
    task: str
    env: envs.CardEnv
    seed: int
    pre: dict  # name -> [T, N, ...] state before each step
    post: dict  # name -> [T, N, ...] state after each step (a fresh episode after done)
    post_tree: object  # the same as a state pytree (canvas: placeholder), for the painter
    action: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    bad: np.ndarray
    obs_is_canvas: np.ndarray
    picks: np.ndarray  # [T] env whose picture was recorded after step t
    pictures: np.ndarray  # [T, S, S, 3]

    @property
    def done(self):
        return self.terminated | self.truncated

    def resets(self) -> dict:
        """Every reset state seen: the initial ones and the fresh episodes after done steps."""
        done = self.done
        return {k: np.concatenate([self.pre[k][0], self.post[k][done]]) for k in self.post}

    def describe(self, t, i) -> str:
        fields = {k: self.pre[k][t, i].tolist() for k in self.pre}
        after = {k: self.post[k][t, i].tolist() for k in self.post}
        text = ""
        if "formula" in fields:
            codes = fields["formula"][: fields["length"]]
            text = " formula '" + " ".join(_TOKEN.get(c, "?") for c in codes) + "'"
        return (
            f"seed {self.seed}, step {t}, env {i}: state {fields}{text}, action "
            f"{int(self.action[t, i])} ({self.env.action_strings[int(self.action[t, i])]}) -> "
            f"reward {float(self.reward[t, i])}, terminated {bool(self.terminated[t, i])}, "
            f"truncated {bool(self.truncated[t, i])}, next {after}"
        )


_TOKEN = F.CODE_TEXT | {F.BLANK: "<blank>"}


def rollout(task: str) -> Run:
    env = envs.make(task)[0]
    params = env.default_params
    n, steps, seed = NUM_ENVS, NUM_STEPS, SEEDS[task]
    policy = jax.vmap(make_policy(env))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    styles = jnp.arange(n) % 4
    picks = np.random.default_rng(seed).integers(0, n, steps)

    @jax.jit
    def run(key):
        k_reset, k_run = jax.random.split(key)
        _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, n), params)

        def body(state, xs):
            k, pick = xs
            k_act, k_step = jax.random.split(k)
            action = policy(jax.random.split(k_act, n), state, styles)
            obs, nxt, reward, terminated, truncated, info = step(
                jax.random.split(k_step, n), state, action, params
            )
            out = {
                "action": action,
                "reward": reward,
                "terminated": terminated,
                "truncated": truncated,
                "bad": info["bad_action"],
                "obs_is_canvas": jnp.array_equal(obs[pick], nxt.canvas[pick]),
                "state": _logical(nxt, n),
                "picture": nxt.canvas[pick],
            }
            return nxt, out

        keys = jax.random.split(k_run, steps)
        _, out = jax.lax.scan(body, state, (keys, jnp.asarray(picks)))
        return _logical(state, n), out

    first, out = jax.device_get(run(jax.random.key(seed)))
    names = [f.name for f in dataclasses.fields(first) if f.name != "canvas"]
    post = {k: np.asarray(getattr(out["state"], k)) for k in names}
    pre = {
        k: np.concatenate([np.asarray(getattr(first, k))[None], post[k][:-1]]) for k in names
    }
    return Run(
        task=task,
        env=env,
        seed=seed,
        pre=pre,
        post=post,
        post_tree=out["state"],
        action=np.asarray(out["action"]),
        reward=np.asarray(out["reward"]),
        terminated=np.asarray(out["terminated"]),
        truncated=np.asarray(out["truncated"]),
        bad=np.asarray(out["bad"]),
        obs_is_canvas=np.asarray(out["obs_is_canvas"]),
        picks=picks,
        pictures=np.asarray(out["picture"]),
    )


@pytest.fixture(scope="module", params=TASK_NAMES)
def run(request):
    return rollout(request.param)


# ------------------------------------------------------------------------------------ helpers
def assert_rows(run: Run, bad: np.ndarray, what: str, expected=None, limit: int = 4):
    """Every (step, env) in `bad` is a violation: report the first ones precisely (with the
    rules' value from `expected`, an array like `bad`, when given)."""
    rows = np.argwhere(bad)
    if len(rows):
        lines = [f"{run.task}: {what}: {len(rows)} of {bad.size} steps; first ones:"]
        for t, i in rows[:limit]:
            want = "" if expected is None else f"; the rules give {expected[t, i]}"
            lines.append("  " + run.describe(t, i) + want)
        pytest.fail("\n".join(lines))


def chi_square(observed, expected_p, what: str):
    """Pearson's test of counts against exact probabilities (cells the law forbids must be
    empty); fails when p < ALPHA."""
    observed = np.asarray(observed, float).ravel()
    p = np.asarray([float(x) for x in np.asarray(expected_p, object).ravel()])
    assert abs(p.sum() - 1) < 1e-9, what
    assert not observed[p == 0].any(), f"{what}: outcomes the rules never produce occurred"
    n = observed.sum()
    e, o = n * p[p > 0], observed[p > 0]
    assert e.min() >= 5, f"{what}: too few samples ({n:.0f}) for the chi-square approximation"
    stat, df = float(((o - e) ** 2 / e).sum()), len(e) - 1
    p_value = stats.chi2.sf(stat, df)
    assert p_value > ALPHA, f"{what}: chi2 = {stat:.1f} with {df} dof, p = {p_value:.2e}"
    return stat, df


def pooled_chi_square(cells, what: str, min_expected: float = 5.0):
    """Conditional laws: `cells` is a list of (group, observed counts, probabilities), one per
    condition. A condition whose expected counts are all >= min_expected adds its own Pearson
    terms; the smaller ones are pooled per `group` (observed and expected counts summed) and
    added when the pool is large enough. A pool of conditions with different laws varies less
    than one multinomial, so pooling only makes the test conservative. At least 99% of the
    samples must be used."""
    stat, df, used, total = 0.0, 0, 0.0, 0.0
    pools: dict = {}

    def add(observed, expected):
        nonlocal stat, df, used
        keep = expected > 0
        stat += float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())
        df += int(keep.sum()) - 1
        used += observed.sum()

    for group, observed, p in cells:
        observed, p = np.asarray(observed, float), np.asarray([float(x) for x in p])
        assert not observed[p == 0].any(), f"{what}: an outcome of probability 0 occurred"
        total += observed.sum()
        expected = observed.sum() * p
        if expected[p > 0].min() >= min_expected:
            add(observed, expected)
        else:
            o, e = pools.get(group, (0.0, 0.0))
            pools[group] = (o + observed, e + expected)
    for o, e in pools.values():
        if (e > 0).sum() > 1 and e[e > 0].min() >= min_expected:
            add(o, e)
    assert used >= 0.99 * total and df > 0, f"{what}: used {used:.0f} of {total:.0f} samples"
    p_value = stats.chi2.sf(stat, df)
    assert p_value > ALPHA, f"{what}: chi2 = {stat:.1f} with {df} dof, p = {p_value:.2e}"
    return stat, df


def hand_value(total, ace):
    return np.where(ace & (total + 10 <= 21), total + 10, total)


# ------------------------------------------------------------------------- every step, all tasks
@pytest.mark.slow
def test_rewards_flags_and_no_nan(run):
    """Rewards finite and in the task's set, every value of the set occurs; terminated and
    truncated exclusive; no bad action; the observation is the carried picture."""
    assert run.action.size >= 1_000_000
    assert np.isfinite(run.reward).all(), f"{(~np.isfinite(run.reward)).sum()} non-finite"
    allowed = np.isin(run.reward, sorted(REWARDS[run.task]))
    assert_rows(run, ~allowed, "reward outside the rules' set")
    assert set(np.unique(run.reward).tolist()) == REWARDS[run.task]
    assert_rows(run, run.terminated & run.truncated, "terminated and truncated at once")
    assert_rows(run, run.bad, "an in-range action flagged bad")
    assert run.obs_is_canvas.all()
    assert run.done.sum() > 50_000 and (run.terminated.sum() > 10_000)
    if run.task != "Blackjack":  # Blackjack never truncates
        assert run.truncated.sum() > 1_000
    else:
        assert not run.truncated.any()


@pytest.mark.slow
def test_state_fields_in_range(run):
    """Every state (the initial ones and each step's next state) is one the rules can produce."""
    _check_states(run, run.post, run.done)
    initial = {k: v[:1] for k, v in run.pre.items()}
    _check_states(run, initial, np.ones_like(run.done[:1]))


def _check_states(run, s, fresh):
    task = run.task
    if task == "NumberLine":
        pos, goal, time = s["position"], s["goal"], s["time"]
        assert_rows(run, (pos < 0) | (pos > 5) | (goal < 0) | (goal > 5), "position/goal")
        assert_rows(run, pos == goal, "a live state at its goal")
        assert_rows(run, (time < 0) | (time > 9), "time outside 0..9")
    elif task in FORMULA_TASKS:
        env = run.env
        ranks, suits, formula, length = s["ranks"], s["suits"], s["formula"], s["length"]
        assert_rows(run, ((ranks < 1) | (ranks > 13)).any(-1), "rank outside 1..13")
        if task == "EZPoints":  # the second card shows a number 2..10
            assert_rows(run, (ranks.min(-1) < 2) | ((ranks > 10).sum(-1) > 1), "EZPoints cards")
        assert_rows(run, ((suits < 0) | (suits > 3)).any(-1), "suit outside 0..3")
        assert_rows(run, (length < 0) | (length > env.max_tokens + 1), "formula length")
        slots = np.arange(env.max_tokens + 1)
        inside = slots < length[..., None]
        codes_ok = np.where(inside, (formula >= 1) & (formula < F.NUM_CODES), formula == F.PAD)
        assert_rows(run, ~codes_ok.all(-1), "formula codes (PAD after the end only)")
        assert_rows(run, s["time"] != length, "time != formula length")
        assert_rows(run, fresh & (length != 0), "a fresh episode with a formula")
    else:
        ranks, suits, num = s["player_ranks"], s["player_suits"], s["num_player_cards"]
        shown_ok = (ranks == 0) | ((ranks >= 1) & (ranks <= 13) & (ranks != 10))
        assert_rows(run, ~shown_ok.all(-1), "a shown player rank of 10 or outside 1..13")
        slots = np.arange(ranks.shape[-1])
        held = slots < np.minimum(num, ranks.shape[-1])[..., None]
        assert_rows(run, (held != (ranks > 0)).any(-1), "player cards != num_player_cards")
        assert_rows(run, (~held & (suits != 0)).any(-1) | ((suits < 0) | (suits > 3)).any(-1),
                    "player suits")  # fmt: skip
        visible = num <= ranks.shape[-1]
        total = np.minimum(ranks, 10).sum(-1)
        assert_rows(run, visible & (s["player_sum"] != total), "player_sum != shown cards")
        assert_rows(run, visible & (s["player_ace"] != (ranks == 1).any(-1)), "player_ace")
        assert_rows(run, hand_value(s["player_sum"], s["player_ace"]) > 21, "a live bust hand")
        assert_rows(run, num < 2, "fewer than two player cards")
        assert_rows(run, s["time"] != num - 2, "time != number of hits")
        up = s["dealer_rank"]
        assert_rows(run, (up < 1) | (up > 13) | (up == 10), "dealer's up card rank")
        assert_rows(run, (s["dealer_suit"] < 0) | (s["dealer_suit"] > 3), "dealer suit")
        hole = s["dealer_sum"] - np.minimum(up, 10)
        assert_rows(run, (hole < 1) | (hole > 10), "dealer hole card value outside 1..10")
        assert_rows(run, s["dealer_ace"] != ((up == 1) | (hole == 1)), "dealer_ace")
        assert_rows(run, fresh & (num != 2), "a fresh hand without exactly two cards")
    assert_rows(run, fresh & (s["time"] != 0), "a fresh episode not at time 0")


# -------------------------------------------------------------------------------- transitions
@pytest.mark.slow
@pytest.mark.parametrize("run", ["NumberLine"], indirect=True)
def test_numberline_transitions(run):
    """Every step: the move (walls at 0 and 5), +1 at the goal (terminated), -1 when the
    distance did not shrink, else 0; truncated when not done after 10 steps."""
    pos, goal, time = run.pre["position"], run.pre["goal"], run.pre["time"]
    a = run.action
    new = np.where(a == 1, np.minimum(pos + 1, 5), np.maximum(pos - 1, 0))
    term = new == goal
    reward = np.where(term, 1.0, np.where(np.abs(new - goal) >= np.abs(pos - goal), -1.0, 0.0))
    trunc = ~term & (time + 1 >= 10)
    assert_rows(run, run.terminated != term, "terminated")
    assert_rows(run, run.truncated != trunc, "truncated")
    assert_rows(run, run.reward != reward, "reward", reward)
    live = ~run.done
    moved = (run.post["position"] != new) | (run.post["goal"] != goal)
    assert_rows(run, live & (moved | (run.post["time"] != time + 1)), "next state")
    assert run.truncated.sum() > 1_000 and (run.reward == 1).sum() > 10_000


def _codes_of_actions(env):
    return np.array(env.action_codes + (F.PAD,), np.int64)


def equals_reward(codes: tuple, values: tuple, target: int, blanks: str) -> float:
    """The reward of "=" by gym_cards.md: +10 if the formula's value is `target` and it uses
    every card (each once), else -1. Numbers in a row, "**", "//" ... are invalid as documented in
    `formula`; `blanks`: "skip" (gym_cards.md: a blank is a space in the evaluated string, so it is
    skipped) or "invalid" (any blank makes the formula invalid)."""
    if blanks == "skip":
        codes = tuple(c for c in codes if c != F.BLANK)
    elif F.BLANK in codes:
        return -1.0
    value = F.evaluate_host(codes)
    numbers = sorted(c for c in codes if F.MIN_NUMBER <= c <= F.MAX_NUMBER)
    return 10.0 if value == target and numbers == sorted(values) else -1.0


def _equals_rows(run: Run):
    """(t, i) of "=" steps that evaluate, their formulas (codes) and card values."""
    env = run.env
    eq = (run.action == env.equals_action) & (run.pre["length"] <= env.max_tokens)
    rows = np.argwhere(eq)
    formula, length = run.pre["formula"], run.pre["length"]
    values = np.minimum(run.pre["ranks"], 10)
    keys = [
        (tuple(formula[t, i, : length[t, i]].tolist()), tuple(sorted(values[t, i].tolist())))
        for t, i in rows
    ]
    return rows, keys


@pytest.mark.slow
@pytest.mark.parametrize("run", FORMULA_TASKS, indirect=True)
def test_formula_transitions(run):
    """Every step: more than max_tokens tokens -> -1, truncated, action ignored; a number used
    more often than the cards show -> -1 and a blank appended; other tokens appended with 0; "="
    ends the episode, and on formulas WITHOUT blanks its reward is the rules' (+10 for the target
    using every card, else -1). Ranks and suits never change within an episode."""
    env = run.env
    pre, a = run.pre, run.action
    formula, length = pre["formula"], pre["length"]
    values = np.minimum(pre["ranks"], 10)
    over = length > env.max_tokens
    eq = a == env.equals_action
    code = _codes_of_actions(env)[a]
    is_num = (code >= F.MIN_NUMBER) & (code <= F.MAX_NUMBER)
    inside = np.arange(env.max_tokens + 1) < length[..., None]
    used = ((formula == code[..., None]) & inside).sum(-1)
    held = (values == code[..., None]).sum(-1)
    valid = ~is_num | (used < held)
    assert_rows(run, run.truncated != over, "truncated != (formula longer than max_tokens)")
    assert_rows(run, run.terminated != (~over & eq), "terminated != (\"=\" pressed in time)")
    assert_rows(run, over & (run.reward != -1), "reward of the over-long step")
    append = ~over & ~eq
    token_reward = np.where(valid, 0.0, -1.0)
    assert_rows(run, append & (run.reward != token_reward), "reward of a token", token_reward)
    # The next state of a live step: the token (or a blank) appended, nothing else changed.
    live = ~run.done
    post = run.post
    slot = length[..., None] == np.arange(env.max_tokens + 1)
    expect = np.where(slot, np.where(valid, code, F.BLANK)[..., None], formula)
    changed = (
        (post["formula"] != expect).any(-1)
        | (post["length"] != length + 1)
        | (post["ranks"] != pre["ranks"]).any(-1)
        | (post["suits"] != pre["suits"]).any(-1)
    )
    assert_rows(run, live & changed, "next state of an appended token")
    # "=" on formulas without blanks (where the readings of gym_cards.md agree).
    rows, keys = _equals_rows(run)
    cache = {}
    bad = np.zeros_like(run.terminated)
    want = np.zeros_like(run.reward)
    n_plain = n_success = 0
    for (t, i), key in zip(rows, keys, strict=True):
        if F.BLANK in key[0]:
            continue
        if key not in cache:
            cache[key] = equals_reward(key[0], key[1], env.target, blanks="invalid")
        n_plain += 1
        n_success += cache[key] > 0
        want[t, i] = cache[key]
        bad[t, i] = run.reward[t, i] != cache[key]
    assert_rows(run, bad, "reward of \"=\" (formula without blanks)", want)
    assert n_plain > 30_000 and n_success > 5_000 and over.sum() > 1_000


@pytest.mark.slow
@pytest.mark.parametrize("run", FORMULA_TASKS, indirect=True)
def test_formula_equals_with_blanks_follows_the_rules(run):
    """gym_cards.md: the original evaluates the tokens joined with no separator and a blank is
    a space there, so it is skipped: cards 3 and 4 with 3, (unheld 5 -> blank), *, 4, = score
    +10. Checked on every "=" step whose formula holds a blank.

    Written when the envs still made any formula holding a blank invalid (then a strict xfail:
    "2 + 10 <blank>" with cards 2 and J scored -1); the envs now skip blanks by default."""
    env = run.env
    rows, keys = _equals_rows(run)
    bad = np.zeros_like(run.terminated)
    want = np.zeros_like(run.reward)
    n_blank = n_differ = 0
    for (t, i), key in zip(rows, keys, strict=True):
        if F.BLANK not in key[0]:
            continue
        n_blank += 1
        want[t, i] = equals_reward(key[0], key[1], env.target, blanks="skip")
        n_differ += want[t, i] != equals_reward(key[0], key[1], env.target, blanks="invalid")
        bad[t, i] = run.reward[t, i] != want[t, i]
    print(f"{run.task}: {len(rows)} evaluated \"=\" steps, {n_blank} with blanks, {n_differ} of "
          f"them scored differently when blanks are skipped than when they are invalid")
    assert n_blank > 10_000 and n_differ > 100  # the case occurs often
    what = "reward of \"=\" on a formula with blanks (gym_cards.md: a blank is skipped)"
    assert_rows(run, bad, what, want)


@pytest.mark.slow
@pytest.mark.parametrize("run", ["Blackjack"], indirect=True)
def test_blackjack_transitions(run):
    """Every step: stand ends the hand (reward -1/0/+1); a hit that cannot bust (hard total
    <= 11) never ends it, one from a hard 21 always busts (-1, terminated); a hit that does not
    bust adds one shown card (never a 10) whose value joins the total, with reward 0 and the
    dealer untouched."""
    pre, post, a = run.pre, run.post, run.action
    stand, hit = a == 0, a == 1
    assert_rows(run, stand & ~run.terminated, "a stand that did not end the hand")
    assert_rows(run, hit & run.done & ((run.reward != -1) | ~run.terminated), "a hit's end")
    assert_rows(run, hit & (pre["player_sum"] + 10 <= 21) & run.done, "an impossible bust")
    assert_rows(run, hit & (pre["player_sum"] >= 21) & ~run.done, "a hit from 21 that held")
    live = ~run.done
    assert_rows(run, live & (run.reward != 0), "a hit that did not bust but was rewarded")
    num = pre["num_player_cards"]
    slots = np.arange(pre["player_ranks"].shape[-1])
    new_slot = slots == num[..., None]
    drawn = (post["player_ranks"] * new_slot).sum(-1)
    visible = num < slots.size
    card_ok = (drawn >= 1) & (drawn <= 13) & (drawn != 10)
    changed = (
        (post["num_player_cards"] != num + 1)
        | (np.where(new_slot, False, post["player_ranks"] != pre["player_ranks"])).any(-1)
        | (visible & ~card_ok)
        | (visible & (post["player_sum"] != pre["player_sum"] + np.minimum(drawn, 10)))
        | (visible & (post["player_ace"] != (pre["player_ace"] | (drawn == 1))))
        | (post["dealer_rank"] != pre["dealer_rank"])
        | (post["dealer_suit"] != pre["dealer_suit"])
        | (post["dealer_sum"] != pre["dealer_sum"])
        | (post["dealer_ace"] != pre["dealer_ace"])
        | (post["time"] != pre["time"] + 1)
    )
    assert_rows(run, live & changed, "next state of a hit")
    assert stand.sum() > 100_000 and (hit & run.done).sum() > 50_000


@functools.cache
def dealer_final(total: int, ace: bool) -> tuple[tuple[int, Fraction], ...]:
    """Exact law of the dealer's final value (22 = bust) from a hand of `total` (aces as 1):
    draws while below 17, an ace counting 11 when that stays <= 21 (so stands on soft 17)."""
    value = total + 10 if ace and total + 10 <= 21 else total
    if value >= 17:
        return ((min(value, 22), Fraction(1)),)
    out: Counter = Counter()
    for v, p in VALUE_P.items():
        for final, q in dealer_final(total + v, ace or v == 1):
            out[final] += p * q
    return tuple(sorted(out.items()))


def stand_outcome_law(player: int, dealer_sum: int, dealer_ace: bool) -> list[Fraction]:
    """P(reward = -1, 0, +1) of standing on `player` (<= 21); a bust dealer scores 0."""
    law = [Fraction(0)] * 3
    for final, p in dealer_final(dealer_sum, dealer_ace):
        score = 0 if final > 21 else final
        law[int(np.sign(player - score)) + 1] += p
    return law


@pytest.mark.slow
@pytest.mark.parametrize("run", ["Blackjack"], indirect=True)
def test_blackjack_hit_and_stand_laws(run):
    """Chi-square, conditional on the state before the step: a hit from hard total h busts with
    P(card value > 21 - h) and otherwise shows rank r with P(r) (1..9: 1/13, J/Q/K: 4/39 each);
    a stand's reward follows the exact law of the dealer drawing to 17 from its two cards."""
    pre, a = run.pre, run.action
    # Hits: condition on the player's total (aces as 1); outcome bust or the shown rank drawn.
    hit = a == 1
    total = pre["player_sum"][hit]
    bust = run.done[hit]
    num = pre["num_player_cards"][hit]
    slots = np.arange(pre["player_ranks"].shape[-1])
    drawn = (run.post["player_ranks"][hit] * (slots == num[:, None])).sum(-1)
    visible = num < slots.size
    outcome = np.where(bust, 0, np.where(visible, drawn, -1))
    ranks = sorted(SHOWN_P)
    cells = []
    for h in range(2, 22):
        sel = (total == h) & (outcome >= 0)
        observed = [np.sum(outcome[sel] == 0)] + [np.sum(outcome[sel] == r) for r in ranks]
        p_bust = sum((p for v, p in VALUE_P.items() if h + v > 21), Fraction(0))
        law = [p_bust] + [SHOWN_P[r] if h + min(r, 10) <= 21 else 0 for r in ranks]
        cells.append((h, observed, law))
    pooled_chi_square(cells, "Blackjack hit: bust / drawn rank given the total")
    # Stands: condition on (player value, dealer total with the hole card, dealer ace).
    stand = a == 0
    value = hand_value(pre["player_sum"], pre["player_ace"])[stand]
    d_sum, d_ace = pre["dealer_sum"][stand], pre["dealer_ace"][stand]
    reward = run.reward[stand].astype(int)
    conditions, which = np.unique(
        np.stack([value, d_sum, d_ace.astype(int)], 1), axis=0, return_inverse=True
    )
    counts = np.zeros((len(conditions), 3), int)
    np.add.at(counts, (which.ravel(), reward + 1), 1)
    cells = [
        (int(v), counts[c], stand_outcome_law(int(v), int(d), bool(ace)))
        for c, (v, d, ace) in enumerate(conditions)
    ]
    pooled_chi_square(cells, "Blackjack stand: reward given player and dealer hands")


# ----------------------------------------------------------------------------------- pictures
@pytest.mark.slow
def test_pictures_equal_the_painter(run):
    """512 recorded pictures (one random env per step, fresh episodes included) equal the host
    painter's picture of the recorded logical state."""
    env = run.env
    fresh = 0
    for t, i in enumerate(run.picks):
        state = jax.tree.map(lambda x, t=t, i=i: x[t, i], run.post_tree)
        want = env.reference_picture(state)
        if not np.array_equal(run.pictures[t], want):
            diff = (run.pictures[t] != want).any(-1).sum()
            pytest.fail(f"{run.task}: picture differs in {diff} pixels; {run.describe(t, i)}")
        fresh += bool(run.done[t, i])
    assert fresh > 20


# --------------------------------------------------------------------------------- reset laws
def _numberline_law():
    law = np.zeros((6, 6), object)
    law[:] = Fraction(0)
    for s in range(6):
        for g in range(6):
            law[s, (g + 1) % 5 if g == s else g] += Fraction(1, 36)
    return law


def _ezpoints_law():
    law = np.zeros((14, 14), object)
    law[:] = Fraction(0)
    for first in range(2, 14):
        n1 = min(first, 10)
        half = Fraction(1, 2)
        options = [(12 // n1, half), (12 - n1, half)] if n1 in (1, 2, 3, 4, 6) else [(12 - n1, 1)]
        for n2, p in options:
            for left, right in ((first, n2), (n2, first)):
                law[left, right] += Fraction(p) / 12 / 2
    return law


def _counts(columns, sizes):
    index = np.ravel_multi_index(tuple(np.asarray(c) for c in columns), sizes)
    return np.bincount(index, minlength=int(np.prod(sizes))).reshape(sizes)


@pytest.mark.slow
def test_reset_laws(run):
    """Chi-square of every reset state (initial and after each done step) against gym_cards.md:
    NumberLine (start, goal) with the clash rule goal = (goal + 1) mod 5; EZPoints' (left, right)
    ranks (first rank 2..13, second 12 // n or 12 - n, swapped half the time) and suits;
    Points24's four ranks 1..13 and suits uniform and independent; Blackjack's visible ranks
    (1..9 and J/Q/K, never a ten), the dealer's (up, hole) values and suits, independent."""
    r = run.resets()
    n = len(next(iter(r.values())))
    assert n > 50_000, n
    task = run.task
    if task == "NumberLine":
        chi_square(_counts([r["position"], r["goal"]], (6, 6)), _numberline_law(), "(start, goal)")
    elif task == "EZPoints":
        ranks, suits = r["ranks"], r["suits"]
        chi_square(_counts([ranks[:, 0], ranks[:, 1]], (14, 14)), _ezpoints_law(), "ranks")
        chi_square(_counts([suits[:, 0], suits[:, 1]], (4, 4)), np.full(16, 1 / 16), "suits")
    elif task == "Points24":
        ranks, suits = r["ranks"], r["suits"]
        pair = np.zeros((14, 14))
        pair[1:, 1:] = 1 / 169
        chi_square(_counts([ranks[:, 0], ranks[:, 1]], (14, 14)), pair, "ranks of cards 0, 1")
        chi_square(_counts([ranks[:, 2], ranks[:, 3]], (14, 14)), pair, "ranks of cards 2, 3")
        chi_square(_counts(suits.T, (4,) * 4), np.full(256, 1 / 256), "suits of the four cards")
        assert (r["length"] == 0).all()
    else:
        shown = np.zeros(14, object)
        shown[:] = Fraction(0)
        for rank, p in SHOWN_P.items():
            shown[rank] = p
        law3 = np.multiply.outer(np.multiply.outer(shown, shown), shown)
        visible = [r["dealer_rank"], r["player_ranks"][:, 0], r["player_ranks"][:, 1]]
        chi_square(_counts(visible, (14, 14, 14)), law3, "shown ranks (dealer up, player x2)")
        values = np.zeros(11, object)
        values[:] = Fraction(0)
        for v, p in VALUE_P.items():
            values[v] = p
        up = np.minimum(r["dealer_rank"], 10)
        hole = r["dealer_sum"] - up
        chi_square(_counts([up, hole], (11, 11)), np.multiply.outer(values, values),
                   "dealer (up, hole) values")  # fmt: skip
        suits = [r["dealer_suit"], r["player_suits"][:, 0], r["player_suits"][:, 1]]
        chi_square(_counts(suits, (4, 4, 4)), np.full(64, 1 / 64), "suits of the three cards")
