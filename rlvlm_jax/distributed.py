"""Multi-host runs: one process per host, every process runs the same program (SPMD).

Each process holds the shards of the global arrays that live on its devices: its share of the
environments, of the batch and (with fsdp) of the params. Host-side code that reads results
must therefore gather them (`to_host`), and every process must make the same collective calls
in the same order, so all processes run the same host loop and only process 0 writes logs,
TensorBoard and JSON. Orbax coordinates checkpoints itself (every process calls save/restore).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """jax.distributed.initialize before any computation. With no arguments JAX detects the
    cluster (Cloud TPU VMs, SLURM, Open MPI); give all three for a hand-made cluster (e.g.
    processes on one machine). CPU collectives go through gloo (JAX's default)."""
    explicit = (coordinator, num_processes, process_id)
    if any(x is not None for x in explicit) and any(x is None for x in explicit):
        raise ValueError("give all of --coordinator, --num_processes and --process_id, or none "
                         "(auto-detection on TPU VMs and SLURM)")
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(coordinator, num_processes, process_id)


def initialize_from_argv(argv: list[str]) -> None:
    """`initialize` from train's --distributed / --coordinator / --num_processes / --process_id
    flags, read straight from argv: it must run before gymnax is imported (gymnax builds arrays
    at import, which starts JAX's backends), so before absl parses the flags."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--distributed", action="store_true")
    parser.add_argument("--nodistributed", dest="distributed", action="store_false")
    parser.add_argument("--coordinator")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    args, _ = parser.parse_known_args(argv)
    if args.distributed or args.coordinator:
        try:
            initialize(args.coordinator, args.num_processes, args.process_id)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None


def is_main() -> bool:
    return jax.process_index() == 0


def to_host(tree):
    """numpy copies of every leaf, gathering across processes where a leaf is split over
    devices of other processes (a collective: every process must call it)."""

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)
