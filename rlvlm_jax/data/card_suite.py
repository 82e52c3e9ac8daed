"""A generated single-turn suite: card-env pictures with questions whose answers are checkable.

MAYE's setting is one picture, one question, one verifiable answer. For the embedded tiny default
the pictures come from the card environments themselves (the tiny model was pretrained to read
them, `rlvlm_jax.pretrain`), and the answers and worked solutions are computed from the drawn
state's true facts (`env.text_fields`), exactly (`rlvlm_jax.envs.solvers`):

    numberline_steps   NumberLine, any start state   |target - current|            "3"
    ezpoints_difference EZPoints at the start          larger minus smaller value    "5"
    points24_solvable  Points24 at the start          24 reachable exactly?         "yes" / "no"
    points24_formula   Points24 at the start          a formula that makes 24       "8/(3-8/3)"/"no"
    blackjack_action   Blackjack at the first deal    basic strategy                "hit" / "stand"

Splits. Each kind's *logical state* is the set of facts that fixes both the picture and the
answer: NumberLine (current, target); EZPoints and Points24 every card's rank and suit, in order;
Blackjack the dealer's up card and the player's two cards, ranks and suits (the hole card is never
drawn and does not change the answer). A fixed hash of (kind, logical state), independent of the
seed, puts every logical state in exactly one split; each split then samples the env's reset
distribution restricted to its own states (with replacement: a state may repeat within a split).
So no train problem of any seed shares a state with a validation or test problem of any seed.
Distinct logical states and the shares held out (each of validation and test):

    numberline_steps        30 states, 20% each: 18 train / 6 validation / 6 test (see below)
    ezpoints_difference    304 states, 10% each: 244 / 31 / 29 (19 ordered rank pairs x 16 suits)
    points24_solvable  7,311,616 states, 10% each
    points24_formula   7,311,616 states, 10% each (its own hash: other splits than _solvable's)
    blackjack_action     110,592 states, 10% each (12 shown ranks: a ten-value card shows J/Q/K)

NumberLine has only 6 x 5 start states (current 0..5, target 0..5 and different). A threshold on
the hash would give lumpy splits of so few states (15 / 7 / 8 at 20%), so a kind that enumerates
its states (`Kind.all_states`) ranks them by the same hash and holds out exactly round(share x
states) each: 20% gives 6 + 6 of 30 (a test pins the counts). Its problems repeat heavily, by
necessity, and 6 test states cannot show every distance (1..5). EZPoints' reset law makes the
second card 12 - a or 12 / a, so its sums are only 7, 8 and 12 (12 for about 4 in 5 problems).

Texts: at most 149 characters (a Points24 "no" with face cards), 51 tokens of the pretrained
reader's tokenizer (a soft-hand Blackjack solution), measured over every reachable state;
points24_formula's run to 57 tokens (the longest of 2,048 drawn training problems).

Speed: candidates are drawn in fixed rounds of logical states only (jit + vmap of the env's reset
rules, no picture), filtered on the host by hash, and the pictures drawn afterwards with
`env.reset` for the chosen keys only, in fixed-size chunks (two compiles per kind and picture
size, about 9 s for all four kinds on 2 CPU cores; then 4 x 512 problems take 0.2-0.3 s). Texts
are built on the host, once per distinct logical state.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlvlm_jax import envs
from rlvlm_jax.data.problems import Problems
from rlvlm_jax.envs import solvers
from rlvlm_jax.envs.demonstrations import card_name

SPLITS = ("train", "validation", "test")
ROUND = 4096  # candidate logical states per draw round (no pictures: cheap)
CHUNK = 256  # pictures drawn per compiled call (the last chunk is padded)
MAX_ROUNDS = 256  # a split that stays short after this many rounds means a broken key or hash


# ----------------------------------------------------------------------------------- texts
def _and(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _boxed(answer: str) -> str:
    return f"The answer is \\boxed{{{answer}}}."


def _cards_text(ranks: Sequence[int]) -> tuple[str, list[int]]:
    """"The cards are 5 and K, which count as 5 and 10." (the pretraining caption's words)."""
    names = [card_name(int(r)) for r in ranks]
    values = [min(int(r), 10) for r in ranks]
    text = f"The cards are {_and(names)}"
    if names != [str(v) for v in values]:
        text += f", which count as {_and([str(v) for v in values])}"
    return text + ".", values


def _numberline_steps(fields: dict) -> tuple[str, str]:
    pos, goal = int(fields["position"]), int(fields["goal"])
    steps = abs(goal - pos)
    hi, lo = max(pos, goal), min(pos, goal)
    text = (f"The current number is {pos} and the target number is {goal}. {hi} - {lo} = "
            f"{steps}, so {steps} {'step is' if steps == 1 else 'steps are'} needed. ")
    return str(steps), text + _boxed(str(steps))


def _ezpoints_difference(fields: dict) -> tuple[str, str]:
    # Not the sum: the env deals a + b = 12 or a * b = 12, so ~78% of sums are 12.
    text, values = _cards_text(fields["cards"])
    hi, lo = max(values), min(values)
    text += f" {hi} - {lo} = {hi - lo}. "
    return str(hi - lo), text + _boxed(str(hi - lo))


def _points24_work(fields: dict) -> tuple[str, str | None]:
    """(the worked solution up to its answer, the solver's formula or None if none makes 24)."""
    text, values = _cards_text(fields["cards"])
    tokens = solvers.solve_points24(values, target=24)
    if tokens is None:
        return text + " No formula that uses each of these numbers once makes 24. ", None
    formula = "".join(tokens)
    return text + f" {formula} = 24. ", formula


def _points24_solvable(fields: dict) -> tuple[str, str]:
    text, formula = _points24_work(fields)
    answer = "no" if formula is None else "yes"
    return answer, text + _boxed(answer)


def _points24_formula(fields: dict) -> tuple[str, str]:
    """The solver's formula is one right answer of many: the "exact_or_formula" checker accepts
    any formula with the same numbers, each used once, and the same exact value (24)."""
    text, formula = _points24_work(fields)
    answer = formula or "no"
    return answer, text + _boxed(answer)


def _blackjack_action(fields: dict) -> tuple[str, str]:
    total, soft = int(fields["player_sum"]), bool(fields["usable_ace"])
    up = int(fields["dealer_up_value"])
    action = envs.Blackjack.action_strings[solvers.blackjack_basic_action(total, soft, up)]
    hand = f"{'soft' if soft else 'hard'} {total}"
    dealer = card_name(up)
    verb = "hits" if action == "hit" else "stands on"
    text = (f"My cards are {_and([card_name(int(r)) for r in fields['player_cards']])}, a "
            f"{hand}. The dealer shows {dealer}. Against {dealer}, basic strategy {verb} a "
            f"{hand}. ")
    return action, text + _boxed(action)


# ------------------------------------------------------------------------------ logical keys
# Each maps a batch of host states (numpy leaves) to one int64 per state, injective on the
# facts that fix the picture and the answer.
def _card_ids(ranks: np.ndarray, suits: np.ndarray) -> np.ndarray:
    return (ranks.astype(np.int64) - 1) * 4 + suits.astype(np.int64)  # 0..51


def _in_base52(cards: np.ndarray) -> np.ndarray:
    return np.sum(cards * 52 ** np.arange(cards.shape[-1], dtype=np.int64), axis=-1)


def _numberline_key(state) -> np.ndarray:
    return np.asarray(state.position, np.int64) * 6 + np.asarray(state.goal, np.int64)


def _numberline_states() -> np.ndarray:
    """All 30 start states: current 0..5 and target 0..5, never equal (the env's reset law)."""
    pos, goal = np.divmod(np.arange(36), 6)
    return (pos * 6 + goal)[pos != goal]


def _formula_cards_key(state) -> np.ndarray:
    return _in_base52(_card_ids(np.asarray(state.ranks), np.asarray(state.suits)))


def _blackjack_key(state) -> np.ndarray:
    ranks = np.concatenate([np.asarray(state.dealer_rank)[:, None],
                            np.asarray(state.player_ranks)[:, :2]], axis=1)
    suits = np.concatenate([np.asarray(state.dealer_suit)[:, None],
                            np.asarray(state.player_suits)[:, :2]], axis=1)
    return _in_base52(_card_ids(ranks, suits))


# ------------------------------------------------------------------------------------ kinds
@dataclasses.dataclass(frozen=True)
class Kind:
    """One question kind: which env draws the picture, the question, the logical state's key and
    the (answer, worked solution) of a state's `text_fields`. Every state the env's reset draws
    must have a unique answer."""

    task: str  # env name for `rlvlm_jax.envs.make`
    question: str
    logical_key: Callable[[object], np.ndarray]  # batched host state -> int64 [N]
    solve: Callable[[dict], tuple[str, str]]  # text_fields -> (answer, solution)
    heldout_share: float = 0.1  # share of logical states in validation, and again in test
    # Every logical key, for a space so small that the splits take exact shares (`split_of`).
    all_states: Callable[[], np.ndarray] | None = None
    # The reward checkers (`rlvlm_jax.rl.rewards`) that judge this kind's answers right; None:
    # any (a single right answer). "math_verify" would take any formula worth 24, even "24".
    checkers: tuple[str, ...] | None = None


KINDS: dict[str, Kind] = {
    "numberline_steps": Kind(
        "NumberLine",
        "How many steps of +1 or -1 move the current number to the target?",
        _numberline_key, _numberline_steps, heldout_share=0.2, all_states=_numberline_states),
    "ezpoints_difference": Kind(
        "EZPoints",
        "What is the larger card minus the smaller card? J, Q and K count as 10.",
        _formula_cards_key, _ezpoints_difference),
    "points24_solvable": Kind(
        "Points24",
        "Can the four cards make 24 with +, -, *, / and parentheses, using each card once? "
        "Answer yes or no.",
        _formula_cards_key, _points24_solvable),
    "points24_formula": Kind(
        "Points24",
        "Write a formula that makes 24 from the four cards with +, -, *, / and parentheses, "
        "using each card once. If there is none, answer no.",
        _formula_cards_key, _points24_formula, checkers=("exact_or_formula",)),
    "blackjack_action": Kind(
        "Blackjack",
        "Should the player hit or stand? Follow basic strategy.",
        _blackjack_key, _blackjack_action),
}


# ------------------------------------------------------------------------------------ splits
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fixed, well-mixed bijection of uint64 (wraps by design)."""
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
    return x ^ (x >> np.uint64(31))


def _uniform_hash(kind: str, logical_keys: np.ndarray) -> np.ndarray:
    """A fixed pseudo-uniform number in [0, 1) per (kind, logical state)."""
    salt = _mix64(np.asarray([zlib.crc32(kind.encode())], np.uint64))
    h = _mix64(np.asarray(logical_keys, np.int64).astype(np.uint64) ^ salt)
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53


def split_of(kind: str, logical_keys: np.ndarray) -> np.ndarray:
    """Split index (0 train, 1 validation, 2 test) of each logical state: fixed forever (no seed),
    so a state belongs to one split whatever the seed or size.

    Large spaces: the hash's value against the shares. Enumerated (small) spaces: the hash's rank
    among all states, so the held-out splits get exactly round(share * states) states each (a
    threshold on 30 states gives lumpy splits such as 15 / 7 / 8).
    """
    spec = KINDS[kind]
    keys = np.asarray(logical_keys, np.int64)
    if spec.all_states is None:
        u = _uniform_hash(kind, keys)
        return np.where(u < spec.heldout_share, 2, np.where(u < 2 * spec.heldout_share, 1, 0))
    table = _enumerated_splits(kind)
    where = np.searchsorted(table[0], keys)
    bad = (where >= len(table[0])) | (table[0][np.minimum(where, len(table[0]) - 1)] != keys)
    if bad.any():
        raise ValueError(f"{kind}: logical states {keys[bad][:5].tolist()} are not among its "
                         f"{len(table[0])} enumerated states")
    return table[1][where]


@functools.cache
def _enumerated_splits(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted logical keys, their splits) of a kind that enumerates its states."""
    spec = KINDS[kind]
    keys = np.unique(np.asarray(spec.all_states(), np.int64))
    held = int(round(spec.heldout_share * len(keys)))
    if not (1 <= held and 2 * held < len(keys)):
        raise ValueError(f"{kind}: {len(keys)} states cannot give every split a state")
    rank = np.empty(len(keys), np.int64)
    rank[np.argsort(_uniform_hash(kind, keys), kind="stable")] = np.arange(len(keys))
    splits = np.where(rank < held, 2, np.where(rank < 2 * held, 1, 0))
    splits.setflags(write=False)
    return keys, splits


# ------------------------------------------------------------------------------------ drawing
@functools.cache
def _drawers(task: str, image_size: int):
    """(env, logic(round key) -> (keys, state without picture), draw(keys) -> state), compiled
    once per task and picture size."""
    env, params = envs.make(task, image_size=image_size)

    @jax.jit
    def logic(round_key):
        # `env.reset(key)` is `_reset_logic(key)` plus the picture: the same facts for the same
        # key, without tracing the picture code (half the compile time).
        keys = jax.random.split(round_key, ROUND)
        blank = jnp.zeros((), jnp.uint8)
        return keys, jax.vmap(lambda k: env._reset_logic(k, params, blank))(keys)

    @jax.jit
    def draw(keys):
        return jax.vmap(env.reset, in_axes=(0, None))(keys, params)[1]

    return env, logic, draw


def _chosen_keys(kind: str, split: int, n: int, image_size: int, seed: int) -> np.ndarray:
    """Reset keys of the first `n` candidates (in draw order) whose state lies in `split`."""
    _, logic, _ = _drawers(KINDS[kind].task, image_size)
    base = jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(kind.encode()) & 0x7FFFFFFF)
    base = jax.random.fold_in(base, split)
    found: list[np.ndarray] = []
    have = 0
    for r in range(MAX_ROUNDS):
        keys, state = jax.device_get(logic(jax.random.fold_in(base, r)))
        mine = split_of(kind, KINDS[kind].logical_key(state)) == split
        found.append(np.asarray(keys)[mine][: n - have])
        have += len(found[-1])
        if have == n:
            return np.concatenate(found)
    raise RuntimeError(f"{kind}: only {have} of {n} {SPLITS[split]} states after {MAX_ROUNDS} "
                       f"rounds of {ROUND} draws; the split's share of states is too small")


def _draw_states(kind: str, keys: np.ndarray, image_size: int):
    """The reset states (pictures included) of `keys`, on the host."""
    _, _, draw = _drawers(KINDS[kind].task, image_size)
    n = len(keys)
    padded = np.concatenate([keys, np.repeat(keys[-1:], -n % CHUNK, axis=0)])
    parts = [jax.device_get(draw(padded[i:i + CHUNK])) for i in range(0, len(padded), CHUNK)]
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *parts)


# ------------------------------------------------------------------------------------ public
def _check_kinds(kinds) -> list[str]:
    if isinstance(kinds, str):
        raise TypeError(f"kinds must be a sequence of kind names, e.g. [{kinds!r}], not a string")
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown problem kind(s) {unknown}; known kinds: {', '.join(KINDS)}")
    if not kinds:
        raise ValueError(f"kinds is empty; choose from {', '.join(KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds {kinds} names a kind twice")
    return kinds


def _check_args(split: str, size, seed) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not isinstance(size, int | np.integer) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be an integer >= 1, got {size!r}")
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")


def draw_states(kind: str, split: str, size: int, *, image_size: int = 112, seed: int = 0):
    """The env states behind `make_suite`'s problems of one kind, in order (host numpy leaves,
    batched, pictures in `.canvas`): for checks and analysis of the suite."""
    _check_kinds([kind])
    _check_args(split, size, seed)
    _drawers(KINDS[kind].task, image_size)  # the env's own error for a size it cannot draw
    keys = _chosen_keys(kind, SPLITS.index(split), int(size), image_size, int(seed))
    return _draw_states(kind, keys, image_size)


def make_suite(kinds: Sequence[str], split: str, size: int, *, image_size: int = 112,
               seed: int = 0) -> Problems:
    """`size` problems of `kinds`, interleaved (row i is of kind i mod len(kinds)), from `split`.

    Deterministic in all arguments; a kind's first problems do not depend on `size` or on the
    other kinds. Ids read "<kind>/<split>/<index within kind>". Every kind's env must be able to
    draw `image_size` (NumberLine >= 55, EZPoints >= 76, Points24 >= 89, Blackjack >= 101 px).
    """
    kinds = _check_kinds(kinds)
    _check_args(split, size, seed)
    for k in kinds:  # every env checks the picture size (its own error) before anything is drawn
        _drawers(KINDS[k].task, image_size)

    images = np.zeros((size, image_size, image_size, 3), np.uint8)
    questions, answers, solutions, ids = [""] * size, [""] * size, [""] * size, [""] * size
    for j, kind in enumerate(kinds):
        rows = np.arange(j, size, len(kinds))
        if not len(rows):
            continue
        spec = KINDS[kind]
        env = _drawers(spec.task, image_size)[0]
        state = draw_states(kind, split, len(rows), image_size=image_size, seed=seed)
        images[rows] = state.canvas
        logical = spec.logical_key(state)
        texts: dict[int, tuple[str, str]] = {}  # one solve per distinct logical state
        for i, row in enumerate(rows):
            key = int(logical[i])
            if key not in texts:
                texts[key] = spec.solve(env.text_fields(jax.tree.map(lambda x, i=i: x[i], state)))
            answers[row], solutions[row] = texts[key]
            questions[row] = spec.question
            ids[row] = f"{kind}/{split}/{i}"
    source = f"card_suite({','.join(kinds)}; {split}; seed {seed}; {image_size} px)"
    return Problems(images, questions, answers, solutions, ids, source)
