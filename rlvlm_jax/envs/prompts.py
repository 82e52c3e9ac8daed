"""Task prompts of the four gym_cards tasks, byte for byte as RL4VLM used them.

The released RL4VLM SFT checkpoints were trained on these exact bytes, so the strings below are data
copied from the original `get_prompt` (VLM_PPO/a2c_ppo_acktr/rl_utils.py), quirks included:
the Points24 typo "thee four cards", the literal backslashes in "\\{" and "\\}" of the two
points tasks (the original wrote "\\{" in a normal string literal, which Python keeps as
backslash + brace), and the mixed spacing around newlines. The original has action-only (no-CoT)
variants of all four prompts (its `action_only` flag drops every key but "action"); they are
reproduced too.

One deliberate difference: the original rebuilt the EZPoints/Points24 prompt from the `info` of the
step just taken, so after an episode ended the next prompt still showed the finished episode's
formula. Here the caller passes the formula of the state the model is about to act in.

The task facts the prompts show (the action lists, the targets) and whether a prompt carries the
formula come from the task table, `rlvlm_jax.envs.tasks`.
"""

from __future__ import annotations

from collections.abc import Sequence

from rlvlm_jax.envs.tasks import Task, get_task

LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
IMAGE_TOKEN = "<image>"  # the original prompt's image placeholder (the tokenizers' too)

# Qwen2-VL / Qwen2.5-VL's chat template (their tokenizer_config.json): an image is
# <|vision_start|> + one <|image_pad|> per merged patch + <|vision_end|>; turns end with
# <|im_end|> (the EOS). The default system turn is the template's.
QWEN_IMAGE_TOKEN = "<|image_pad|>"
QWEN_VIDEO_TOKEN = "<|video_pad|>"
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                 "<|vision_end|>", QWEN_IMAGE_TOKEN, QWEN_VIDEO_TOKEN)
QWEN_SYSTEM = "You are a helpful assistant."
CHATS = ("llava", "qwen")  # conversation styles: the model family's (rl/policy.py: chat_of)


def image_token(chat: str = "llava") -> str:
    """The placeholder token a conversation style expands into the image's tokens."""
    return QWEN_IMAGE_TOKEN if chat == "qwen" else IMAGE_TOKEN


def conversation(user_text: str, chat: str = "llava", system: bool = True) -> str:
    """One user turn (the picture first, then `user_text`) opening the assistant's answer.

    "llava": LLaVA's `llava_v1` (`llava_conversation`), or without `system` the bare
    "USER: <image>\n... ASSISTANT:". "qwen": Qwen's chat template (with or without its default
    system turn)."""
    if chat == "llava":
        if system:
            return llava_conversation(user_text)
        return f"USER: {IMAGE_TOKEN}\n{user_text} ASSISTANT:"
    if chat == "qwen":
        head = f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n" if system else ""
        return (f"{head}<|im_start|>user\n<|vision_start|>{QWEN_IMAGE_TOKEN}<|vision_end|>"
                f"{user_text}<|im_end|>\n<|im_start|>assistant\n")
    raise ValueError(f"unknown conversation style {chat!r}; known: {CHATS}")

# ----------------------------------------------------------------------------- prompt pieces (data)
_JSON_INTRO = "Your response should be a valid json file in the following format: "

_NUMBERLINE_HEAD = (
    "You are playing a game called number line. You will see a target number and a current "
    "number in the image. "
    "And your goal is to move the current number closer to the target by choosing either adding "
    "or subtracting one to the current number. " + _JSON_INTRO + "\n{\n "
)
_NUMBERLINE_COT = (
    '"current number": "x", \n'
    '"target number": "x", \n'
    '"thoughts": "{first read out the current and target number, then think carefully about '
    'which action to choose}", \n'
)
_NUMBERLINE_TAIL = '"action": "-" or "+" \n}'

_BLACKJACK_HEAD = (
    "You are a blackjack player. You are observing the current game state, you can choose "
    "between ['stand', 'hit']. " + _JSON_INTRO + "\n{\n "
)
_BLACKJACK_COT = (
    '"thoughts": "{first describe your total points and the dealer\'s total points then think '
    'about which action to choose}", \n'
)
_BLACKJACK_TAIL = '"action": "stand" or "hit" \n}'

_POINTS_RULES = (
    "The number or operator you choose will be appended to the current formula. "
    "Note that 'J', 'Q', and 'K' count as '10'. "
    "Your goal is to output a formula that evaluates to {target}, and each number can only be "
    "used once. " + _JSON_INTRO + "\\{\n"
)
_POINTS_TAIL = '"action": "{number}" or "{operator}" \n \\}'


def _choices(actions: Sequence[str]) -> str:
    return "You can choose between [" + ", ".join(f"'{a}'" for a in actions) + "]. "


def formula_text(formula_tokens: Sequence[str | int] | None) -> str:
    """The formula as the original prompt shows it: tokens joined with no separator.

    Blank tokens (" ", which the env appends after an invalid number) are kept, as in the original.
    """
    if not formula_tokens:
        return ""
    return "".join(str(t) for t in formula_tokens)


def _numberline_prompt(formula: str, cot: bool) -> str:
    return _NUMBERLINE_HEAD + (_NUMBERLINE_COT if cot else "") + _NUMBERLINE_TAIL


def _blackjack_prompt(formula: str, cot: bool) -> str:
    return _BLACKJACK_HEAD + (_BLACKJACK_COT if cot else "") + _BLACKJACK_TAIL


def _ezpoints_prompt(formula: str, cot: bool) -> str:
    spec = get_task("EZPoints")
    head = (
        "You are an expert card game player. You are observing two cards in the image. "
        f"You are observing the current formula: {formula}. "
        + _choices(spec.action_strings)
        + _POINTS_RULES.replace("{target}", str(spec.target))
    )
    body = ""
    if cot:
        body = (
            ' "cards": [x, y], \n'
            f'"current formula": {formula}, \n'
            "\"thoughts\": {First check whether the current formula 'z' is complete. "
            "If the current formula 'z' is complete, output '='. "
            "Otherwise consider which number or operator should be appended to the current "
            "formula to make it equal 12.} \n"
        )
    return head + body + _POINTS_TAIL


def _points24_prompt(formula: str, cot: bool) -> str:
    spec = get_task("Points24")
    head = (
        "You are an expert 24 points card game player. You are observing thee four cards in the "
        "image. "
        f"You are observing the current formula: {formula}. "
        + _choices(spec.action_strings)
        + _POINTS_RULES.replace("{target}", str(spec.target))
    )
    body = ""
    if cot:
        body = (
            ' "cards": [x, y, z, w], \n'
            f'"current formula": {formula}, \n'
            '"thoughts": {First check whether the current formula equals 24. '
            "If the current formula equals 24, output '='. "
            "Otherwise consider which number or operator should be appended to the current "
            "formula to make it equal 24.} \n"
        )
    return head + body + _POINTS_TAIL


_BUILDERS = {
    "NumberLine": _numberline_prompt,
    "EZPoints": _ezpoints_prompt,
    "Points24": _points24_prompt,
    "Blackjack": _blackjack_prompt,
}


def task_prompt(
    task: str | Task, formula_tokens: Sequence[str | int] | None = None, cot: bool = True
) -> str:
    """The original task prompt; for EZPoints/Points24 it embeds `formula_tokens` (twice with CoT).

    Pass the formula of the state being acted in (never the previous step's info). It is ignored
    by NumberLine and Blackjack, whose prompts are constant.
    """
    spec = get_task(task)
    return _BUILDERS[spec.name](formula_text(formula_tokens) if spec.has_formula else "", cot)


def llava_conversation(task_prompt_text: str) -> str:
    """Wraps a task prompt in LLaVA's `llava_v1` template (SeparatorStyle.TWO), as the original."""
    return f"{LLAVA_V1_SYSTEM} USER: {IMAGE_TOKEN}\n{task_prompt_text} ASSISTANT:"


def full_prompt(
    task: str | Task, formula_tokens: Sequence[str | int] | None = None, cot: bool = True
) -> str:
    """The complete model input text of one step (before the image token is expanded)."""
    return llava_conversation(task_prompt(task, formula_tokens, cot))
