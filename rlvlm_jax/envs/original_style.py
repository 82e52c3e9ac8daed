"""The original gym_cards pictures, drawn on the device from the user's copy of its card images.

RL4VLM's released checkpoints saw gym_cards' own pictures: PNG card images resized and pasted on a
felt-green (or, for NumberLine, white) 300x300 canvas, with DejaVu Sans text. `style="original"`
on any card env paints exactly that, with the layouts below transcribed from gym_cards'
`_get_observation` / `_get_obs` (positions, card sizes, fonts and sizes, the formula as one line
of tokens joined by spaces). The images are not shipped here: pass the directory of an original
checkout or installed package (`card_images=...`; `find_card_images` accepts the checkout, the
package or its `img` folder). As for our own style, every variant is painted once on the host with
PIL and the device writes tiles (`render.Picture`); the formula line, whose tokens move with the
text before them, is a `render.TextRun`.

Measured against the original's renderer in `tests/envs/test_original_style.py` (run where
gym_cards is installed): see the test for the figure. The original's pictures are 300 px; models
with another input size get them resized by their preprocessing (as RL4VLM's CLIP processor
resized them to 336).
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rlvlm_jax.envs import formula as F
from rlvlm_jax.envs.render import NUM_CARDS, Picture, text_run

SIZE = 300  # the original's canvas
FELT = "#35654d"  # the original's background colour string
SUIT_LETTERS = "SHDC"  # our suit index 0..3 (spades, hearts, diamonds, clubs) -> file prefix
FACES = "A23456789TJQK"  # rank 1..13 -> file suffix (the original's "T" for ten)
BACK = "card"  # the face-down card (Blackjack's dealer hole card)


def card_name(variant: int) -> str:
    """The original's image name of a card id (rank - 1) * 4 + suit, e.g. 0 -> "SA"."""
    return SUIT_LETTERS[variant % 4] + FACES[variant // 4]


def needed_images(task: str) -> tuple[str, ...]:
    """The image names (without ".png") a task's pictures paste."""
    if task == "NumberLine":
        return ()
    faces = tuple(card_name(v) for v in range(NUM_CARDS))
    return faces + ((BACK,) if task == "Blackjack" else ())


def find_card_images(path: str | os.PathLike | None, task: str) -> str | None:
    """The folder holding the task's card PNGs under `path` (an RL4VLM checkout, its `gym-cards`
    folder, the installed `gym_cards` package or its `img` folder); None for NumberLine, which
    pastes no image. Errors name what is missing and what to pass."""
    names = needed_images(task)
    if not names:
        return None
    if not path:
        raise ValueError(
            f"{task}: style='original' pastes the original gym_cards card images; pass "
            "card_images=<an RL4VLM checkout, its gym-cards folder, or the installed gym_cards "
            "package> (they are not shipped with rlvlm_jax)"
        )
    root = os.path.abspath(os.fspath(path))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{task}: card_images={os.fspath(path)!r} is not a directory; "
                                "pass the original gym_cards checkout or package directory")
    candidates = [os.path.join(root, *tail) for tail in
                  ((), ("img",), ("envs", "img"), ("gym_cards", "envs", "img"),
                   ("gym-cards", "gym_cards", "envs", "img"))]
    found = [d for d in candidates if os.path.isdir(d)
             and any(f.endswith(".png") for f in os.listdir(d))]
    if not found:
        raise FileNotFoundError(
            f"{task}: no card images (*.png) in {root} or in its img/, envs/img/, "
            "gym_cards/envs/img/ or gym-cards/gym_cards/envs/img/ folders; pass the original "
            "gym_cards checkout or package directory")
    folder = found[0]
    missing = [f"{n}.png" for n in names if not os.path.isfile(os.path.join(folder, f"{n}.png"))]
    if missing:
        shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12
                                           else "")
        raise FileNotFoundError(f"{task}: the card image folder {folder} is incomplete: missing "
                                f"{shown} (the original's img/ folder has all 52 faces and "
                                f"{BACK}.png)")
    return folder


@functools.cache
def original_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """The font the original asks for (`ImageFont.truetype('dejavu/<name>')`, found among the
    system's fonts), else the same DejaVu file that matplotlib ships."""
    try:
        return ImageFont.truetype(f"dejavu/{name}", size)
    except OSError:
        import matplotlib

        return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", name),
                                  size)


@functools.cache
def _card(folder: str, name: str, w: int, h: int) -> Image.Image:
    with Image.open(os.path.join(folder, f"{name}.png")) as im:
        return im.resize((w, h))  # the original's call: the default filter, alpha kept


def build_picture(task: str, folder: str | None) -> Picture:
    """The original's 300 px picture of `task` as device tiles (`folder` from
    `find_card_images`)."""
    if task == "NumberLine":
        return _numberline()
    if task == "Blackjack":
        return _blackjack(folder)
    return _formula(task, folder)


def _numberline() -> Picture:
    font = original_font("DejaVuSans-Bold.ttf", 36)

    def paint(v):
        img = Image.new("RGB", (SIZE, SIZE), color="white")
        draw = ImageDraw.Draw(img)
        draw.text((30, 60), f"Target: {v['target']}", fill="black", font=font)
        draw.text((30, 180), f"Current: {v['current']}", fill="black", font=font)
        return np.asarray(img)

    from rlvlm_jax.envs.numberline import MAX_POSITION

    return Picture(SIZE, paint, {"target": MAX_POSITION + 1, "current": MAX_POSITION + 1})


def _formula(task: str, folder: str) -> Picture:
    num_cards = 2 if task == "EZPoints" else 4
    card_w = int(SIZE / num_cards * 0.9)
    card_h = int(card_w * 7 / 5)
    tokens = {code: text for code, text in F.CODE_TEXT.items()}  # numbers, operators, blank " "
    if task == "EZPoints":  # one line: "Formula: " and the tokens
        font = original_font("DejaVuSans.ttf", 20)
        label, label_xy, line_xy = None, None, (10, SIZE * 0.86)
        prefix = "Formula: "
    else:  # Points24: a label line, then the tokens on their own line
        font = original_font("DejaVuSans.ttf", 16)
        label, label_xy, line_xy = "Formula:", (10, SIZE * 0.70), (10, SIZE * 0.80)
        prefix = ""

    def paint(v):
        canvas = Image.new("RGB", (SIZE, SIZE), FELT)
        for i in range(num_cards):
            img = _card(folder, card_name(v[f"card{i}"]), card_w, card_h)
            canvas.paste(img, (5 + int(i * img.width * 1.1), int((SIZE - img.height) / 2)))
        draw = ImageDraw.Draw(canvas)
        text = " ".join(F.CODE_TEXT[c] for c in v["formula"])
        if label:
            draw.text(label_xy, label, fill="white", font=font)
        draw.text(line_xy, prefix + text, fill="white", font=font)
        return np.asarray(canvas)

    def runs(background):
        return (text_run("formula", background, line_xy, prefix, tokens, font, (255, 255, 255)),)

    variants = {f"card{i}": NUM_CARDS for i in range(num_cards)}
    return Picture(SIZE, paint, variants, runs=runs, run_names=("formula",))


# Blackjack's player cards: rows of five from (5, 150), 74 px apart, the second row 102 px lower.
# The original moves to the next row only after drawing the fifth card at x = 301, off the canvas,
# so the fifth and tenth cards are never visible; they get no region.
_BJ_CARD = (70, 98)


def _player_slot(i: int) -> tuple[int, int]:
    row, col = divmod(i, 5)
    return 5 + (_BJ_CARD[0] + 4) * col, 150 + (_BJ_CARD[1] + 4) * row


def _blackjack(folder: str) -> Picture:
    from rlvlm_jax.envs.blackjack import SHOWN_PLAYER_CARDS

    font = original_font("DejaVuSans-Bold.ttf", 16)
    visible = [i for i in range(SHOWN_PLAYER_CARDS) if _player_slot(i)[0] < SIZE]

    def paint(v):
        img = Image.new("RGB", (SIZE, SIZE), color=FELT)
        draw = ImageDraw.Draw(img)
        draw.text((5, 5), "Dealer", fill="white", font=font)
        img.paste(_card(folder, card_name(v["dealer"]), *_BJ_CARD), (5, 25))
        img.paste(_card(folder, BACK, *_BJ_CARD), (78, 25))
        draw.text((5, 130), "Player", fill="white", font=font)
        for i in visible:
            if v.get(f"player{i}", 0):
                img.paste(_card(folder, card_name(v[f"player{i}"] - 1), *_BJ_CARD),
                          _player_slot(i))
        return np.asarray(img)

    variants = {"dealer": NUM_CARDS} | {f"player{i}": NUM_CARDS + 1 for i in visible}
    return Picture(SIZE, paint, variants)
