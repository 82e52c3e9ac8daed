"""MAYE's JSONL problem files (mm_math5k, geometry3k) -> `Problems`.

One JSON object per line, as MAYE released them (GAIR-NLP/MAYE, README.md "Each sample follows
the format" and maye/datasets/math.py, which opens `jsonl_dir / sample["image"]`):

    {"question": "<image>In the figure, ... What is $B C ?$", "answer": "20",
     "solution": "\\\\boxed{20}", "id": "geometry3k_2948",
     "image": "geometry3k_images/geometry3k_2948.png"}

Keys read (the first key present in each tuple wins; MAYE's own key comes first):
- question: "question" | "problem". Its `<image>` placeholders are removed (the picture is
  placed by the prompt template, not by the text).
- image: "image" | "image_path" | "images" (a list holding exactly one path). A path relative to
  the JSONL file's directory, or absolute.
- answer: "answer" | "final_answer" | "ground_truth" (a string or a number). If absent or empty,
  the last `\\boxed{...}` of the solution (nested braces handled, `rewards.extract_boxed`).
- solution: "solution" (optional when there is an answer; then the answer stands in for it).
Other keys (MAYE's "id") are ignored: a row is named "name.jsonl:LINE" by its real line number.

Blank (or whitespace-only) lines are skipped: they carry no row, and ids keep the real line
numbers, so nothing shifts. Anything else that is wrong (a line that is not a JSON object, a
missing or empty field, an image that does not exist or does not decode, no answer anywhere)
raises ValueError naming "file:line" and the field, before anything is returned: no row is ever
skipped silently.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from PIL import Image

from rlvlm_jax.data.problems import Problems
from rlvlm_jax.rl.rewards import extract_boxed

QUESTION_KEYS = ("question", "problem")
IMAGE_KEYS = ("image", "image_path", "images")
ANSWER_KEYS = ("answer", "final_answer", "ground_truth")
SOLUTION_KEYS = ("solution",)

_WHITE = (255, 255, 255)


@dataclasses.dataclass
class _Row:
    line: int
    where: str
    question: str
    answer: str
    solution: str
    image: str  # absolute path
    image_key: str  # the key it came from, for error messages


def _field(row: dict, keys: tuple[str, ...]):
    """(key, value) of the first of `keys` present in `row` with a non-null value."""
    for key in keys:
        if row.get(key) is not None:
            return key, row[key]
    return None, None


def _names(keys: tuple[str, ...]) -> str:
    return repr(keys[0]) + (f" (or {', '.join(map(repr, keys[1:]))})" if len(keys) > 1 else "")


def _read_row(row: dict, where: str, line: int, root: str) -> _Row:
    key, question = _field(row, QUESTION_KEYS)
    if key is None:
        raise ValueError(f"{where}: missing field {_names(QUESTION_KEYS)}: each row needs the "
                         "question text")
    if not isinstance(question, str):
        raise ValueError(f"{where}: field {key!r} must be a string, got "
                         f"{type(question).__name__}")
    question = question.replace("<image>", "").strip()
    if not question:
        raise ValueError(f"{where}: field {key!r} is empty (apart from <image> placeholders)")

    key, image = _field(row, IMAGE_KEYS)
    if key is None:
        raise ValueError(f"{where}: missing field {_names(IMAGE_KEYS)}: each row needs the path "
                         "of its picture (relative to the JSONL file's folder, or absolute)")
    if isinstance(image, list):
        if len(image) != 1:
            raise ValueError(f"{where}: field {key!r} lists {len(image)} images; one picture per "
                             "problem is supported")
        image = image[0]
    if not isinstance(image, str) or not image.strip():
        raise ValueError(f"{where}: field {key!r} must be a non-empty path string, got "
                         f"{image!r}")
    image, image_key = os.path.join(root, image), key  # an absolute `image` stays as it is

    skey, solution = _field(row, SOLUTION_KEYS)
    if solution is not None and not isinstance(solution, str):
        raise ValueError(f"{where}: field {skey!r} must be a string, got "
                         f"{type(solution).__name__}")
    akey, answer = _field(row, ANSWER_KEYS)
    if isinstance(answer, bool) or not (answer is None or isinstance(answer, str | int | float)):
        raise ValueError(f"{where}: field {akey!r} must be a string or a number, got "
                         f"{type(answer).__name__}")
    answer = "" if answer is None else str(answer).strip()
    if not answer:
        if solution is None:
            raise ValueError(f"{where}: no answer: the row needs a field {_names(ANSWER_KEYS)} or "
                             f"a {SOLUTION_KEYS[0]!r} with a final \\boxed{{...}} answer")
        boxed = extract_boxed(solution)
        if boxed is None or not boxed.strip():
            raise ValueError(f"{where}: no answer: field {skey!r} has no complete, non-empty "
                             f"\\boxed{{...}} and the row has no {_names(ANSWER_KEYS)}")
        answer = boxed.strip()
    return _Row(line, where, question, answer, answer if solution is None else solution, image,
                image_key)


def _rgb(img: Image.Image) -> Image.Image:
    """RGB, transparent parts on white: diagrams are often black strokes on a transparent
    background, which a plain RGB conversion would turn black on black."""
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE + (255,)),
                                     rgba).convert("RGB")
    return img.convert("RGB")


def _square(img: Image.Image, size: int) -> np.ndarray:
    """Pads to a square on white (centred), then resizes to `size` with PIL's antialiased bicubic
    filter (the one the vision towers' preprocessing reproduces, `models/preprocess.py`).

    Padding rather than stretching: a stretch changes angles and turns circles into ellipses,
    which matters for geometry; a centre crop (what the towers do to non-square input) would cut
    off labels near the edges. White, because the diagrams are drawn on white."""
    w, h = img.size
    side = max(w, h)
    if w != h:
        canvas = Image.new("RGB", (side, side), _WHITE)
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    if side != size:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, np.uint8)


def _load_image(row: _Row, size: int) -> np.ndarray:
    key = row.image_key
    if not os.path.isfile(row.image):
        raise ValueError(f"{row.where}: field {key!r}: image file does not exist: {row.image} "
                         "(relative paths are read from the JSONL file's folder)")
    try:
        with Image.open(row.image) as img:
            img.load()
            return _square(_rgb(img), size)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise ValueError(f"{row.where}: field {key!r}: cannot decode {row.image} as an image "
                         f"({type(e).__name__}: {e})") from e


def load_jsonl(path: str, image_size: int) -> Problems:
    """All rows of MAYE-format `path` (see the module docstring), pictures decoded, composited on
    white, padded to square and resized to `image_size` x `image_size` (uint8 RGB)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"problem file not found: {path}")
    root = os.path.dirname(os.path.abspath(path))
    rows: list[_Row] = []
    # Text fields are all checked before any picture is decoded: a typo on line 5,000 fails in
    # a second, not after minutes of decoding (and the image array is allocated once, at the end).
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            where = f"{path}:{line}"
            try:
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from e
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each "
                                 "non-blank line must be one JSON object") from e
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            rows.append(_read_row(row, where, line, root))
    if not rows:
        raise ValueError(f"{path}: no problems (every line is blank)")

    images = np.empty((len(rows), image_size, image_size, 3), np.uint8)
    for k, row in enumerate(rows):
        images[k] = _load_image(row, image_size)
    name = os.path.basename(path)
    return Problems(images, [r.question for r in rows], [r.answer for r in rows],
                    [r.solution for r in rows], [f"{name}:{r.line}" for r in rows], path)
