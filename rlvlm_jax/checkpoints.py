"""Orbax checkpoints of the whole training state: params, optimiser state, env state, RNG and
counters, keeping the newest N; restore checks the layout first and says what does not match.

The state is a nested dict of arrays. Typed PRNG keys cannot be serialised, so callers store
`jax.random.key_data(key)` and rewrap it. Restoring takes a target state (a freshly built one):
arrays come back with the target's shapes, dtypes and shardings, so a run resumes onto whatever
mesh the current process built. Metadata (counters, the config) is JSON beside the arrays.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
    """A checkpoint that is missing or does not fit the current config."""


def _layout(tree) -> dict[str, tuple]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        jax.tree_util.keystr(path): (tuple(np.shape(x)), str(np.asarray(x).dtype)
                                     if not hasattr(x, "dtype") else str(x.dtype))
        for path, x in flat
    }


class Checkpointer:
    """Save/restore numbered checkpoints under `directory` (kept: the newest `keep`)."""

    def __init__(self, directory: str, keep: int = 3):
        # A local path is made absolute (orbax needs it); a URL such as gs:// stays as given.
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max(1, int(keep)), create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, meta: dict) -> None:
        """Write checkpoint `step` and wait for it (a crash never leaves a half-written newest)."""
        meta = dict(meta, layout={k: list(v[0]) + [v[1]] for k, v in _layout(state).items()})
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def read_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return out.meta

    def restore(self, target, step: int | None = None):
        """(state, meta) of checkpoint `step` (default newest), placed like `target`.

        Raises CheckpointError before reading any array when the stored layout (paths, shapes,
        dtypes) differs from the target's.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        meta = self.read_meta(step)
        want = {k: list(v[0]) + [v[1]] for k, v in _layout(target).items()}
        have = meta.get("layout", {})
        if have != want:
            missing = sorted(set(want) - set(have))[:5]
            extra = sorted(set(have) - set(want))[:5]
            differ = [k for k in sorted(set(want) & set(have)) if want[k] != have[k]][:5]
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} does not match the current config: "
                f"missing {missing}, unexpected {extra}, "
                + ", ".join(f"{k}: stored {have[k]} vs now {want[k]}" for k in differ)
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return out.state, out.meta

    def close(self) -> None:
        self.manager.close()
