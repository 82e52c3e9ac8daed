"""Template chain-of-thought demonstrations for SFT, in the JSON-like format the prompts ask for.

Each demonstration is a valid JSON object whose keys follow the task prompt and whose last key is
"action"; the parser (`parse.py`) maps it back to the intended action. The thoughts say only true
things about the state (cards, totals, formula) and then justify the oracle action. When a caller
overrides the action (e.g. deliberately wrong demonstrations), the facts stay and the justification
is replaced by a plain statement of the chosen action, so the text never argues for one action and
outputs another.

Thoughts avoid double quotes: JSON would escape them as \\", and `\\"action\\":` would contain the
parser's key `"action":`.

Oracles: NumberLine moves toward the goal; Blackjack follows the exact basic strategy of
`solvers`; EZPoints/Points24 continue a solution that the current formula is a prefix of (blank
tokens from invalid moves are ignored, as Python's `eval` ignores the spaces), preferring the
fewest-parentheses solution, and output "=" once the formula is a solution. When no solution can
be reached any more (an unsolvable hand or an off-track formula) they output "=": every way on
scores -1 at least, and "=" ends the episode with a single -1. The prefix test compares against
the fewest-parentheses print of every solution tree, so a formula with redundant parentheses, e.g.
"(8*3)", counts as off track even if it could still be finished.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence

from rlvlm_jax.envs import solvers
from rlvlm_jax.envs.prompts import formula_text
from rlvlm_jax.envs.tasks import Task, get_task

_FACES = {1: "A", 11: "J", 12: "Q", 13: "K"}


def card_name(rank: int) -> str:
    """How a card of rank 1..13 is shown: A, 2..10, J, Q, K."""
    if not 1 <= rank <= 13:
        raise ValueError(f"card rank must be 1..13, got {rank}")
    return _FACES.get(rank, str(rank))


def _and(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _render(pairs: list[tuple[str, object]]) -> str:
    """One key per line, JSON-encoded values: valid JSON whose last key is the action."""
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "\n}"


def _action_string(spec: Task, action: int | str) -> str:
    if isinstance(action, str):
        if action not in spec.action_strings:
            raise ValueError(f"{action!r} is not a {spec.name} action {spec.action_strings}")
        return action
    if not 0 <= int(action) < spec.num_actions:
        raise ValueError(f"action id {action} out of range for {spec.name}")
    return spec.action_strings[int(action)]


def answer_only(task: str | Task, action: int | str) -> str:
    """The no-CoT answer: only the "action" key."""
    spec = get_task(task)
    return _render([("action", _action_string(spec, action))])


# ------------------------------------------------------------------------------------ NumberLine
def _numberline(spec, position: int, goal: int, action):
    oracle = spec.action_strings[solvers.numberline_optimal_action(position, goal)]
    chosen = oracle if action is None else _action_string(spec, action)
    thoughts = f"The current number is {position} and the target number is {goal}."
    if chosen == oracle:
        if position < goal:
            thoughts += (
                f" {position} is smaller than {goal}, so adding one moves the current number "
                "closer to the target. I choose '+'."
            )
        else:
            thoughts += (
                f" {position} is larger than {goal}, so subtracting one moves the current number "
                "closer to the target. I choose '-'."
            )
    else:
        thoughts += f" I choose '{chosen}'."
    pairs = [
        ("current number", str(position)),
        ("target number", str(goal)),
        ("thoughts", thoughts),
        ("action", chosen),
    ]
    return oracle, _render(pairs)


# ------------------------------------------------------------------------------------- Blackjack
def _dealer_text(up: int) -> str:
    if up == 1:
        return "The dealer shows an ace, so the dealer has 11 (or 1) plus a hidden card."
    what = "a card worth 10" if up == 10 else f"a {up}"
    return f"The dealer shows {what}, so the dealer has {up} plus a hidden card."


def _blackjack_reason(total: int, soft: bool, up: int, hit: bool) -> str:
    dealer = "an ace" if up == 1 else str(up)
    weak = 2 <= up <= 6
    kind = "soft" if soft else "hard"
    if total == 21 and not hit:
        return "I already have 21, so I stand."
    if not soft and total <= 11:
        return f"With {total} no single card can bust me, so I hit." if hit else "I stand."
    if soft and hit:
        return (
            f"A soft {total} cannot bust on the next card, and one more card improves my "
            f"chances against a dealer showing {dealer}, so I hit."
        )
    if soft:
        return f"A soft {total} is a strong total against a dealer showing {dealer}, so I stand."
    if total >= 17 and not hit:
        return f"A hard {total} would bust too often if I hit, so I stand."
    if weak and not hit:
        return (
            f"The dealer shows a weak {dealer} and will often bust, so I stand on my hard "
            f"{total} instead of risking a bust myself."
        )
    if hit and weak:
        risk = "only a 10-value card busts me" if total == 12 else "the bust risk is moderate"
        return (
            f"With a hard {total} {risk}, and the dealer's {dealer} is not weak enough to stand "
            "against, so I hit."
        )
    if hit:
        return (
            f"The dealer shows a strong {dealer} and will likely finish with 17 or more, which "
            f"beats my hard {total}, so I hit to improve."
        )
    return f"Basic strategy for a {kind} {total} against {dealer} is to stand, so I stand."


def _blackjack(spec, player_sum, usable_ace, dealer_up_value, player_cards, action):
    total, soft, up = int(player_sum), bool(usable_ace), int(dealer_up_value)
    if not (12 if soft else 4) <= total <= 21:
        raise ValueError(f"no decision at a {'soft' if soft else 'hard'} total of {total}")
    if player_cards is not None:
        t, s = 0, False
        for rank in player_cards:
            t, s = solvers._add_card(t, s, min(int(rank), 10))
        if (t, s) != (total, soft):
            raise ValueError(f"cards {list(player_cards)} give ({t}, {s}), not ({total}, {soft})")
    oracle = spec.action_strings[solvers.blackjack_basic_action(total, soft, up)]
    chosen = oracle if action is None else _action_string(spec, action)
    if player_cards is not None:
        mine = f"My cards are {_and([card_name(int(r)) for r in player_cards])}, so my total is "
    else:
        mine = "My total is "
    mine += f"{total} with a usable ace counted as 11." if soft else f"{total}."
    thoughts = mine + " " + _dealer_text(up) + " "
    if chosen == oracle:
        thoughts += _blackjack_reason(total, soft, up, chosen == "hit")
    else:
        thoughts += f"I choose to {chosen}."
    return oracle, _render([("thoughts", thoughts), ("action", chosen)])


# --------------------------------------------------------------------------- EZPoints / Points24
def _points_plan(spec, values: list[int], tokens: list[str]):
    """(next action string, kind, solution or None); kind: start/continue/complete/none/stuck."""
    if spec.name == "EZPoints":
        sols = solvers.ezpoints_solutions(*values, target=spec.target)
        preferred = sols[0] if sols else None
    else:
        sols = solvers.points24_solutions(values, target=spec.target)
        preferred = solvers.solve_points24(values, target=spec.target)
    if tokens in sols:
        return "=", "complete", tokens
    ext = [s for s in sols if s[: len(tokens)] == tokens]
    if preferred is not None and preferred in ext:
        ext.insert(0, preferred)
    if ext:
        return ext[0][len(tokens)], ("start" if not tokens else "continue"), ext[0]
    return "=", ("none" if not sols else "stuck"), None


def _points(spec, cards, formula, action, sort_values: bool = False):
    n_cards = 2 if spec.name == "EZPoints" else 4
    if len(cards) != n_cards:
        raise ValueError(f"{spec.name} needs {n_cards} cards, got {list(cards)}")
    ranks = [int(c) for c in cards]
    names = [card_name(r) for r in ranks]
    values = [min(r, 10) for r in ranks]
    formula = [str(t) for t in (formula or [])]
    tokens = [t for t in formula if t.strip()]
    shown = formula_text(formula)
    target = spec.target
    nxt, kind, sol = _points_plan(spec, values, tokens)
    chosen = nxt if action is None else _action_string(spec, action)

    thoughts = f"The cards are {_and(names)}"
    if names != [str(v) for v in values]:
        thoughts += f", which count as {_and([str(v) for v in values])}"
    thoughts += "."
    if sort_values:
        thoughts += " " + _sorted_sentence(values)
    thoughts += (
        f" The current formula is '{shown}'." if tokens else " The current formula is empty."
    )
    if chosen == nxt:
        expr = "".join(sol) if sol is not None else ""
        if kind == "complete":
            thoughts += (
                f" It uses every card once and equals {target}, so the formula is complete and "
                "I output '='."
            )
        elif kind == "start":
            thoughts += (
                f" {expr} = {target} uses each card once, so I start the formula with '{nxt}'."
            )
        elif kind == "continue":
            thoughts += (
                f" It is not complete yet. {expr} = {target} uses each card once and begins with "
                f"the current formula, so I append '{nxt}'."
            )
        elif kind == "none":
            thoughts += (
                f" No formula that uses each of these numbers once makes {target}, so I output "
                "'=' to end the game."
            )
        else:
            thoughts += (
                f" The current formula cannot be completed to {target} with the remaining cards, "
                "so I output '=' to end the game."
            )
    elif chosen == "=":
        thoughts += " I choose to output '='."
    else:
        thoughts += f" I choose to append '{chosen}'."
    pairs = [
        ("cards", names),
        ("current formula", shown),
        ("thoughts", thoughts),
        ("action", chosen),
    ]
    return nxt, _render(pairs)


def _sorted_sentence(values: Sequence[int]) -> str:
    return f"In order, they are {_and([str(v) for v in sorted(values)])}."


def solution_corpus(task: str | Task, sort_values: bool = True,
                    hands: Sequence[Sequence[int]] | None = None) -> list[tuple[str, str]]:
    """Text-only records of Points24's arithmetic, for mixing into SFT the way LLaVA-1.5
    mixes text-only conversations into its visual instruction tuning: for every hand of values
    (in ascending order) and every state on the oracle's way through it, (the thoughts from the
    values to the current formula, the rest of the thoughts). With `sort_values` they begin at
    the demonstrations' "In order, they are ..." sentence, so the solution a picture's thoughts
    must recall follows the same words as here; else at "The cards are ..." (sorted). `hands`
    (values 1..10) restricts the corpus to those hands; default: every hand.

    Why: the tiny decoder writes Points24's oracle solution for only ~10% of hands after SFT on
    pictures (see experiments/points24_tiny.py); text-only records repeat all 715 hands' solutions
    at a fraction of a picture demonstration's cost.
    """
    spec = get_task(task)
    if spec.name != "Points24":
        raise ValueError(f"solution_corpus is for Points24, not {spec.name} (EZPoints' oracle "
                         "prefers a solution by the cards' order, not by the hand)")
    n_cards = 4
    start = "In order, they are" if sort_values else "The cards are"
    records = []
    if hands is None:
        hands = itertools.combinations_with_replacement(range(1, 11), n_cards)
    for hand in hands:
        hand = sorted(int(v) for v in hand)
        if len(hand) != n_cards or not all(1 <= v <= 10 for v in hand):
            raise ValueError(f"{spec.name} hands are {n_cards} values in 1..10, got {hand}")
        formula: list[str] = []
        while True:
            nxt, text = _points(spec, list(hand), formula, None, sort_values)
            thoughts = json.loads(text)["thoughts"]
            thoughts = thoughts[thoughts.index(start):]
            cut = thoughts.index(".", thoughts.index("The current formula")) + 1
            records.append((thoughts[:cut], thoughts[cut:]))
            if nxt == "=":
                break
            formula.append(nxt)
    return records


# ------------------------------------------------------------------------------------ public API
_FIELDS = {  # required, optional
    "NumberLine": (("position", "goal"), ()),
    "EZPoints": (("cards",), ("formula",)),
    "Points24": (("cards",), ("formula",)),
    "Blackjack": (("player_sum", "usable_ace", "dealer_up_value"), ("player_cards",)),
}


def _dispatch(task, state: dict, action, sort_values: bool = False):
    spec = get_task(task)
    required, optional = _FIELDS[spec.name]
    missing = [f for f in required if f not in state]
    extra = sorted(set(state) - set(required) - set(optional))
    if missing or extra:
        raise TypeError(f"{spec.name} state: missing {missing}, unexpected {extra}")
    if spec.name == "NumberLine":
        return spec, _numberline(spec, state["position"], state["goal"], action)
    if spec.name == "Blackjack":
        return spec, _blackjack(
            spec,
            state["player_sum"],
            state["usable_ace"],
            state["dealer_up_value"],
            state.get("player_cards"),
            action,
        )
    return spec, _points(spec, state["cards"], state.get("formula"), action, sort_values)


def cot_demonstration(task: str | Task, *, action: int | str | None = None,
                      sort_values: bool = False, **state) -> str:
    """The chain-of-thought answer for a state; `action` overrides the oracle's choice.

    State fields: NumberLine(position, goal); EZPoints/Points24(cards: ranks 1..13, formula: the
    env's formula tokens, blanks included); Blackjack(player_sum, usable_ace, dealer_up_value,
    player_cards: ranks 1..13, optional). `sort_values` (Points24) adds a sentence listing
    the card values in ascending order after the cards: a fixed-order key for the solution that
    follows (`solution_corpus`).
    """
    spec = get_task(task)
    if sort_values and spec.name != "Points24":
        raise ValueError(f"sort_values is for Points24's thoughts, not {spec.name}")
    _, (_, text) = _dispatch(spec, state, action, sort_values)
    return text


def oracle_action(task: str | Task, **state) -> int:
    """The action id the demonstrations pick for a state."""
    spec, (oracle, _) = _dispatch(task, state, None)
    return spec.action_strings.index(oracle)
