"""The one record of single-turn problems: a picture, a question and its verifiable answer.

Both sources (MAYE's JSONL files, `jsonl.py`; the generated card suite, `card_suite.py`) produce
this, so the single-turn loop reads one shape: pictures already decoded and resized once (host
uint8, moved to the device in static-shape batches), texts kept on the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass
class Problems:
    """Aligned rows. `answers` are final answers as a checker reads them ("15", "\\frac{1}{2}",
    "hit"); `solutions` are full worked solutions where the source has them (MAYE's files), else
    the answer; `ids` name each row for error messages and prediction dumps ("file.jsonl:12")."""

    images: np.ndarray  # uint8 [N, S, S, 3]
    questions: list[str]  # the user's text, without the <image> placeholder
    answers: list[str]
    solutions: list[str]
    ids: list[str]
    source: str  # a file path or a generator name

    def __post_init__(self):
        n = len(self.questions)
        sizes = {len(self.images), n, len(self.answers), len(self.solutions), len(self.ids)}
        if len(sizes) != 1:
            raise ValueError(f"{self.source}: misaligned problems (images {len(self.images)}, "
                             f"questions {n}, answers {len(self.answers)}, solutions "
                             f"{len(self.solutions)}, ids {len(self.ids)})")
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"{self.source}: images must be uint8 [N, S, S, 3], got "
                             f"{self.images.dtype} {self.images.shape}")

    def __len__(self) -> int:
        return len(self.questions)

    def select(self, index: Sequence[int] | np.ndarray) -> Problems:
        """The rows `index`, in that order."""
        idx = np.asarray(index, np.int64)
        pick = [int(i) for i in idx]
        return Problems(self.images[idx], [self.questions[i] for i in pick],
                        [self.answers[i] for i in pick], [self.solutions[i] for i in pick],
                        [self.ids[i] for i in pick], self.source)
