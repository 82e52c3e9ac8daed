"""The one table of task facts: every fact about a card task that more than one module needs.

Env classes (`CardEnv` subclasses take their row with `class NumberLine(CardEnv, task=...)`),
prompts, the host and device parsers, the demonstrations, the tokenizer corpus and the tour all
read the task name, ids, action strings, target and text flags from here. This module is the bottom
of the envs package: it imports no env class and no prompt module, so all of them can import it.

What stays elsewhere, on purpose: the prompt texts (`prompts`, data copied byte for byte from the
original), the rules and pictures (the env classes), and the solvers (`solvers`).
"""

from __future__ import annotations

import dataclasses

_NUMBERS = tuple(str(v) for v in range(1, 11))  # the card values 1..10 (J, Q, K count as 10)


@dataclasses.dataclass(frozen=True)
class Task:
    """Facts about one task.

    name: our short name ("Points24"), also the key of `TASKS`.
    gym_id: the original gymnasium id in RL4VLM's gym_cards ("gym_cards/Points24-v0").
    gymnax_id: the id this package registers with gymnax ("Points24-v0").
    action_strings: the action texts, in action-id order (the original's action lists; for the
      points tasks "=" is the last action).
    has_formula: the prompt carries the current formula (EZPoints, Points24), so it changes every
      step and must be rebuilt from the current state.
    has_ten: the parser's special "10" rule applies (the original keyed it on 'points' in the env
      name; see `parse`).
    target: the value the formula must reach (12, 24), None for tasks without a formula.
    image_size: the default picture side in pixels (the original's 300).
    oracle: the name of the `rlvlm_jax.envs.solvers` function whose rule the oracle action
      follows. The host oracle (`demonstrations.oracle_action`) is built on it; each env class's
      jittable `oracle_action` applies the same rule (NumberLine, EZPoints inline, Blackjack and
      Points24 through tables computed by `solvers`). For Points24 both play a fewest-parentheses
      solution but may pick different ones of the same hand (host: in card order, device: of the
      sorted hand).
    """

    name: str
    gym_id: str
    gymnax_id: str
    action_strings: tuple[str, ...]
    has_formula: bool
    has_ten: bool
    target: int | None
    image_size: int = 300
    oracle: str = ""

    @property
    def num_actions(self) -> int:
        return len(self.action_strings)


def _task(name: str, actions: tuple[str, ...], *, target: int | None, oracle: str) -> Task:
    points = target is not None  # EZPoints and Points24: a formula, the "10" rule, a target
    return Task(
        name=name,
        gym_id=f"gym_cards/{name}-v0",
        gymnax_id=f"{name}-v0",
        action_strings=actions,
        has_formula=points,
        has_ten=points,
        target=target,
        oracle=oracle,
    )


# The order is the original's (and the card tokenizer corpus's): keep it.
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _task("NumberLine", ("-", "+"), target=None, oracle="numberline_optimal_action"),
        _task("EZPoints", _NUMBERS + ("+", "*", "="), target=12, oracle="solve_ezpoints"),
        _task(
            "Points24",
            _NUMBERS + ("+", "-", "*", "/", "(", ")", "="),
            target=24,
            oracle="solve_points24",
        ),
        _task("Blackjack", ("stand", "hit"), target=None, oracle="blackjack_basic_action"),
    )
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
_BY_ID: dict[str, Task] = {
    key: t for t in TASKS.values() for key in (t.name, t.gymnax_id, t.gym_id)
}


def known_names() -> str:
    """Every accepted spelling of the tasks, for error messages: short names, then the ids."""
    return (
        f"{sorted(TASKS)}, their gymnax ids {[t.gymnax_id for t in TASKS.values()]} or the "
        f"original gym_cards ids {[t.gym_id for t in TASKS.values()]}"
    )


def get_task(task: str | Task) -> Task:
    """The row of a task by its short name ("Points24"), gymnax id ("Points24-v0") or original
    gym id ("gym_cards/Points24-v0"); a `Task` is returned as is (e.g. a synthetic one)."""
    if isinstance(task, Task):
        return task
    if task in _BY_ID:
        return _BY_ID[task]
    raise KeyError(f"unknown task {task!r}; expected one of {known_names()}")
