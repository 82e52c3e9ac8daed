"""MAYE's JSONL problem files: rows, pictures, answers, and errors that name file:line and field."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from rlvlm_jax.data.jsonl import load_jsonl


def _png(path, size=(8, 8), color=(255, 0, 0), mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def _jsonl(tmp_path, lines, name="p.jsonl"):
    """Writes `lines` (dicts as JSON, strings as they are) one per line."""
    path = tmp_path / name
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return str(path)


def _row(**kw):
    row = {"question": "<image>In the figure, what is $BC$?", "answer": "20",
           "solution": "\\boxed{20}", "id": "geometry3k_2948", "image": "imgs/a.png"}
    row.update(kw)
    return {k: v for k, v in row.items() if v is not None}


def test_maye_rows_with_relative_and_absolute_paths_and_blank_lines(tmp_path):
    _png(str(tmp_path / "imgs" / "a.png"), size=(40, 20), color=(255, 0, 0))
    absolute = _png(str(tmp_path / "elsewhere" / "b.png"), size=(24, 24), color=(0, 0, 255))
    path = _jsonl(tmp_path, [
        _row(),
        "",
        "   ",
        _row(image=absolute, question="<image>\nFind x.", answer="3", solution="x = \\boxed{3}"),
    ])
    p = load_jsonl(path, image_size=16)
    assert len(p) == 2 and p.source == path
    assert p.images.shape == (2, 16, 16, 3) and p.images.dtype == np.uint8
    assert p.ids == ["p.jsonl:1", "p.jsonl:4"]  # real line numbers: blank lines shift nothing
    assert p.questions == ["In the figure, what is $BC$?", "Find x."]
    assert p.answers == ["20", "3"] and p.solutions == ["\\boxed{20}", "x = \\boxed{3}"]
    # 40x20 red is padded to a square on white (centred), not stretched: white bands above
    # and below, red in the middle rows.
    a = p.images[0].astype(int)
    assert (a[0] > 240).all() and (a[-1] > 240).all()
    assert (a[8] == [255, 0, 0]).all()
    assert (p.images[1] == [0, 0, 255]).all()


def test_answers_from_boxed_solutions_aliases_and_numbers(tmp_path):
    _png(str(tmp_path / "imgs" / "a.png"))
    path = _jsonl(tmp_path, [
        _row(answer=None, solution="So $BC = \\boxed{\\frac{1}{2}}$, not \\boxed{2}... wait: "
                                   "\\boxed{\\frac{1}{2}}."),
        {"problem": "Area?", "images": ["imgs/a.png"], "final_answer": 15},
        {"question": "Angle?", "image_path": "imgs/a.png", "ground_truth": "30^\\circ"},
        _row(answer="7", solution="\\boxed{8}"),  # a separate answer field wins over the box
    ])
    p = load_jsonl(path, image_size=8)
    assert p.answers == ["\\frac{1}{2}", "15", "30^\\circ", "7"]
    assert p.solutions[1] == "15"  # no solution: the answer stands in for it
    assert p.questions[1] == "Area?"


def test_transparent_pictures_are_composited_on_white(tmp_path):
    _png(str(tmp_path / "imgs" / "a.png"), size=(10, 10), color=(0, 0, 0, 0), mode="RGBA")
    p = load_jsonl(_jsonl(tmp_path, [_row()]), image_size=4)
    assert (p.images == 255).all()


@pytest.mark.parametrize("bad, field", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (_row(question=None), "'question'"),
    (_row(question="<image>"), "'question' is empty"),
    (_row(question=3), "'question' must be a string"),
    (_row(image=None), "'image'"),
    (_row(image=["imgs/a.png", "imgs/a.png"]), "lists 2 images"),
    (_row(answer=None, solution=None), "'answer'"),
    (_row(answer=None, solution="it is 20"), "'solution' has no complete"),
    (_row(answer=None, solution="\\boxed{20"), "'solution' has no complete"),
    (_row(answer=[20]), "'answer' must be a string or a number"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, bad, field):
    _png(str(tmp_path / "imgs" / "a.png"))
    path = _jsonl(tmp_path, [_row(), bad, _row()])
    with pytest.raises(ValueError, match="p.jsonl:2: ") as e:
        load_jsonl(path, image_size=8)
    assert field in str(e.value)


def test_missing_image_names_file_line_and_path(tmp_path):
    _png(str(tmp_path / "imgs" / "a.png"))
    path = _jsonl(tmp_path, [_row(), _row(), _row(image="imgs/missing.png")])
    with pytest.raises(ValueError, match="p.jsonl:3: field 'image': image file does not") as e:
        load_jsonl(path, image_size=8)
    assert str(tmp_path / "imgs" / "missing.png") in str(e.value)


def test_undecodable_image(tmp_path):
    _png(str(tmp_path / "imgs" / "a.png"))
    (tmp_path / "imgs" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    path = _jsonl(tmp_path, [_row(image="imgs/bad.png"), _row()])
    with pytest.raises(ValueError, match="p.jsonl:1: field 'image': cannot decode .*bad.png"):
        load_jsonl(path, image_size=8)


def test_empty_file_bad_size_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no problems"):
        load_jsonl(_jsonl(tmp_path, ["", " "]), image_size=8)
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        load_jsonl(_jsonl(tmp_path, [_row()]), image_size=0)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_jsonl(str(tmp_path / "nope.jsonl"), image_size=8)
