"""TensorBoard output through tensorboardX (no TensorFlow) and a one-line console progress.

`Writer` takes host floats; it never blocks the device beyond the `device_get` the caller does.
"""

from __future__ import annotations

import sys
import time

import numpy as np


class Writer:
    """Scalars, images and text for TensorBoard under `logdir` (None: a no-op writer)."""

    def __init__(self, logdir: str | None):
        self._w = None
        if logdir is not None:
            from tensorboardX import SummaryWriter

            self._w = SummaryWriter(logdir, flush_secs=10)

    def scalars(self, step: int, values: dict, prefix: str = "") -> None:
        if self._w is None:
            return
        for k, v in values.items():
            try:
                x = float(v)
            except (TypeError, ValueError):
                continue
            if np.isfinite(x):
                self._w.add_scalar(f"{prefix}{k}", x, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """uint8 HWC picture."""
        if self._w is not None:
            self._w.add_image(tag, np.asarray(image), step, dataformats="HWC")

    def text(self, tag: str, text: str, step: int) -> None:
        if self._w is not None:
            # Markdown: keep line breaks and the JSON's quotes visible.
            self._w.add_text(tag, "    " + text.replace("\n", "\n    "), step)

    def flush(self) -> None:
        if self._w is not None:
            self._w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()


class Progress:
    """`[stage] step 12/60  success 0.81  ... ETA 1m20s` lines on stdout."""

    def __init__(self, stage: str, total: int, start: int = 0, stream=None):
        self.stage, self.total, self.start = stage, total, start
        self.t0 = time.time()
        self.stream = stream  # None: sys.stdout at each call (silenced off process 0)

    def line(self, step: int, values: dict) -> str:
        done = max(step - self.start, 1)
        rate = (time.time() - self.t0) / done
        eta = max(self.total - step, 0) * rate
        parts = [f"[{self.stage}] {step}/{self.total}"]
        for k, v in values.items():
            parts.append(f"{k} {v:.4g}" if isinstance(v, float | int | np.floating) else f"{k} {v}")
        parts.append(f"{rate:.2f}s/it ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        return "  ".join(parts)

    def __call__(self, step: int, values: dict) -> None:
        print(self.line(step, values), file=self.stream or sys.stdout, flush=True)
