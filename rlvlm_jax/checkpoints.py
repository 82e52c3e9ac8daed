"""Orbax checkpoints of the whole training state: params, optimiser state, env state, RNG and
counters, keeping the newest N; restore checks the layout first and says what does not match.

The state is a nested dict of arrays. Typed PRNG keys cannot be serialised, so callers store
`jax.random.key_data(key)` and rewrap it. Restoring takes a target state (a freshly built one):
arrays come back with the target's shapes, dtypes and shardings, so a run resumes onto whatever
mesh the current process built. Metadata (counters, the config) is JSON beside the arrays.

Faults: `save` writes nothing unless every float array is finite (FloatingPointError), so a
checkpoint on disk is one worth resuming from. Orbax writes into `<step>.orbax-checkpoint-tmp`
and renames it when complete, so a process killed mid-save leaves no half-written step (the
next save of that step replaces the temporary folder). A step that cannot be read anyway
(truncated or deleted files, unparsable metadata, non-finite arrays written by older code) is
skipped by `restore_latest`: it restores the newest readable step, with one warning line per
skipped step, and can move the skipped ones aside (`<step>.unreadable`) so that the resumed
run can write those steps again. A stored layout that differs from the target's (the config
changed) is not a fault: it stays a CheckpointError, never a fallback to an older step.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from rlvlm_jax import distributed as dist


class CheckpointError(ValueError):
    """A checkpoint that is missing or does not fit the current config."""


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint whose files cannot be read back (or hold non-finite arrays)."""


def _layout(tree) -> dict[str, tuple]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        jax.tree_util.keystr(path): (tuple(np.shape(x)), str(np.asarray(x).dtype)
                                     if not hasattr(x, "dtype") else str(x.dtype))
        for path, x in flat
    }


@jax.jit
def _finite_leaves(leaves):
    """One bool per leaf (on the device; integer leaves are always finite)."""
    return jnp.stack([jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
                      else jnp.bool_(True) for x in leaves])


def non_finite_paths(tree) -> list[str]:
    """Paths of the leaves of `tree` holding a NaN or infinity (a vector of bools to the host)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    if not flat:
        return []
    ok = dist.to_host(_finite_leaves([x for _, x in flat]))
    return [jax.tree_util.keystr(path) for (path, _), good in zip(flat, ok, strict=True)
            if not good]


def _reason(e: BaseException, limit: int = 240) -> str:
    """A one-line description of a read error (TensorStore's messages run to kilobytes)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text.split(" [tensorstore_spec=")[0]
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _agree(ok: bool) -> bool:
    """True on every process when it is True on all (every process must take the same
    fallback, or their collectives would no longer match)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def _warn(message: str) -> None:
    if jax.process_index() == 0:
        print(f"[checkpoint] warning: {message}", file=sys.stderr, flush=True)


# A failed restore abandons TensorStore reads still in flight: orbax's event loop closes at the
# first error, and each later completion reports "Event loop is closed" (sys.unraisablehook)
# or "Task exception was never retrieved" with the whole TensorStore spec (asyncio's logger):
# hundreds of lines after the one that matters. Both are dropped, narrowly, from the first
# restore on: that RuntimeError, and asyncio records whose exception names a checkpoint
# directory being read.
_READ_DIRS: set[str] = set()


class _AbandonedReads(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not any(d in str(exc) for d in _READ_DIRS)


def _quiet_abandoned_reads(directory: str) -> None:
    if not _READ_DIRS:
        logging.getLogger("asyncio").addFilter(_AbandonedReads())
        previous = sys.unraisablehook

        def hook(u):
            if not (isinstance(u.exc_value, RuntimeError)
                    and str(u.exc_value) == "Event loop is closed"):
                previous(u)

        sys.unraisablehook = hook
    _READ_DIRS.add(directory)


Target = Any  # a state tree, or a function of the checkpoint's meta returning one


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
        """Write checkpoint `step` and wait for it (a crash never leaves a half-written newest).

        Raises FloatingPointError, writing nothing, when an array of `state` is not finite."""
        bad = non_finite_paths(state)
        if bad:
            kept = self.latest_step()
            raise FloatingPointError(
                f"checkpoint {step} not written: non-finite values in {len(bad)} arrays ("
                + ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "") + ")"
                + ("" if kept is None else f"; the newest good checkpoint, {kept}, is kept"))
        self._write(step, state, meta)

    def _write(self, step: int, state, meta: dict) -> None:
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

    def restore(self, target: Target, step: int | None = None):
        """(state, meta) of checkpoint `step` (default: the newest readable one, see
        `restore_latest`), placed like `target` (a state tree, or a function of the
        checkpoint's meta returning one: the layout may depend on the stage stored there).

        Raises CheckpointError before reading any array when the stored layout (paths, shapes,
        dtypes) differs from the target's, and UnreadableCheckpoint (a CheckpointError, one
        line) when the step's files cannot be read or hold non-finite arrays.
        """
        if step is None:
            found = self.restore_latest(target)
            if found is None:
                raise CheckpointError(f"no checkpoint in {self.directory}")
            return found[1:]
        self.manager.reload()  # another process (training) may have written since
        if step not in self.all_steps():
            raise CheckpointError(f"no checkpoint {step} in {self.directory} (there: "
                                  f"{self.all_steps()})")
        return self._restore_step(step, target)

    def restore_latest(self, target: Target, *, set_aside: bool = False):
        """(step, state, meta) of the newest checkpoint that can be read; None if there is none.

        Steps that cannot be read are skipped, newest first, each named in one warning line;
        raises UnreadableCheckpoint if no step can be read, and CheckpointError (no fallback)
        at the first step whose layout differs from the target's. With `set_aside`, skipped
        steps newer than the restored one are renamed `<step>.unreadable` (kept for
        inspection; out of the way of the resumed run, which writes those steps again).
        """
        self.manager.reload()
        failed: list[tuple[int, str]] = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, meta = self._restore_step(step, target)
            except UnreadableCheckpoint as e:
                failed.append((step, str(e)))
                continue
            for bad, why in failed:
                where = f" ({bad} {self._set_aside(bad)})" if set_aside else ""
                _warn(f"{why}; restored checkpoint {step} instead{where}")
            if set_aside and failed:
                if jax.process_count() > 1:  # the renames are process 0's
                    multihost_utils.sync_global_devices("rlvlm_jax_checkpoint_set_aside")
                self.manager.reload()
            return step, state, meta
        if failed:
            raise UnreadableCheckpoint(
                f"no readable checkpoint in {self.directory}: "
                + "; ".join(why for _, why in failed))
        return None

    def _restore_step(self, step: int, target: Target):
        where = f"checkpoint {step} in {self.directory}"
        _quiet_abandoned_reads(self.directory)
        try:
            meta = self.read_meta(step)
        except Exception as e:  # any read error means the same: unreadable
            ok, why = False, _reason(e)
        else:
            ok, why = True, ""
        if not _agree(ok):
            raise UnreadableCheckpoint(f"{where} is unreadable (meta: "
                                       f"{why or 'on another process'})")
        target = target(meta) if callable(target) else target
        want = {k: list(v[0]) + [v[1]] for k, v in _layout(target).items()}
        have = meta.get("layout", {})
        if have != want:
            missing = sorted(set(want) - set(have))[:5]
            extra = sorted(set(have) - set(want))[:5]
            differ = [k for k in sorted(set(want) & set(have)) if want[k] != have[k]][:5]
            raise CheckpointError(
                f"{where} does not match the current config: "
                f"missing {missing}, unexpected {extra}, "
                + ", ".join(f"{k}: stored {have[k]} vs now {want[k]}" for k in differ)
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        state, why = None, ""
        try:
            state = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            ).state
        except Exception as e:
            why = f"arrays: {_reason(e)}"
        else:
            bad = non_finite_paths(state)
            if bad:
                why = f"non-finite values in {', '.join(bad[:3])}"
        if not _agree(not why):
            raise UnreadableCheckpoint(f"{where} is unreadable ({why or 'on another process'})")
        return state, meta

    def _set_aside(self, step: int) -> str:
        """Rename step `step` to `<step>.unreadable[.n]` (process 0); says where it went."""
        src = epath.Path(self.directory) / str(step)
        n, dst = 0, epath.Path(self.directory) / f"{step}.unreadable"
        while dst.exists():
            n += 1
            dst = epath.Path(self.directory) / f"{step}.unreadable.{n}"
        if jax.process_index() == 0:
            try:
                src.rename(dst)
            except Exception:  # a store that cannot rename folders: delete it instead
                src.rmtree()
                return "deleted"
        return f"moved to {dst}"

    def close(self) -> None:
        self.manager.close()
