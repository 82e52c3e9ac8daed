"""Accelerators the planner knows: memory per device, peak bf16 FLOP/s, and how slices are named.

One JAX device = one TPU chip (v4 and v5p run their two TensorCores as one "megacore" device) or
one GPU. Slice names follow Cloud TPU's accelerator types, whose number counts different things:

    v4-N, v5p-N            N TensorCores, 2 per chip  -> N / 2 devices  (v4-32 = 16 chips)
    v5litepod-N, v5e-N     N chips                    -> N devices      (v5e-32 = 32 chips)
    v6e-N                  N chips                    -> N devices

A plain kind (`v5e`, `h100`, ...) leaves the device count to the mesh; `h100x8` names 8 GPUs.

Figures (checked against the vendors' pages, 2026): TPU v4 32 GiB HBM2 / 275 TFLOP/s bf16 per
chip; v5e 16 GB / 197; v5p 95 GB / 459; v6e (Trillium) 32 GB / 918; H100 SXM 80 GB / 989 dense;
H200 141 GB / 989; A100 40 or 80 GB / 312. Google's "GB" for TPU HBM are binary (a v5e chip
reports 15.75 GiB usable of 16 GiB), so all are taken as GiB here; the planner's headroom
(10% by default) covers runtime reservations such as those.
"""

from __future__ import annotations

import dataclasses
import re

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Accelerator:
    kind: str  # canonical short name
    label: str  # human name
    hbm_bytes: int  # memory per JAX device
    peak_flops: float  # dense bf16 FLOP/s per JAX device
    cores_per_device_in_slice_name: int = 1  # v4 / v5p slice names count TensorCores


ACCELERATORS: dict[str, Accelerator] = {a.kind: a for a in (
    Accelerator("v4", "TPU v4", 32 * GIB, 275e12, 2),
    Accelerator("v5e", "TPU v5e", 16 * GIB, 197e12, 1),
    Accelerator("v5p", "TPU v5p", 95 * GIB, 459e12, 2),
    Accelerator("v6e", "TPU v6e", 32 * GIB, 918e12, 1),
    Accelerator("h100", "NVIDIA H100 80GB", 80 * GIB, 989e12),
    Accelerator("h200", "NVIDIA H200 141GB", 141 * GIB, 989e12),
    Accelerator("a100-40gb", "NVIDIA A100 40GB", 40 * GIB, 312e12),
    Accelerator("a100-80gb", "NVIDIA A100 80GB", 80 * GIB, 312e12),
)}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "trillium": "v6e", "h100-80gb": "h100",
           "h200-141gb": "h200"}
TPU_SLICES = ("v4", "v5p", "v5e", "v6e")


class DeviceError(ValueError):
    """An accelerator name the planner does not know, or a mesh that does not match it."""


@dataclasses.dataclass(frozen=True)
class Target:
    """What `--device` named: the accelerator and, for a slice or `<gpu>xN`, the device count."""

    name: str
    accelerator: Accelerator
    devices: int | None  # None: a plain kind, the mesh decides

    def check_mesh(self, mesh_devices: int) -> None:
        if self.devices is not None and mesh_devices != self.devices:
            how = ""
            a = self.accelerator
            if a.cores_per_device_in_slice_name > 1:
                how = (f" ({self.name} counts {self.devices * a.cores_per_device_in_slice_name} "
                       f"TensorCores, {a.cores_per_device_in_slice_name} per chip; one JAX "
                       "device per chip)")
            raise DeviceError(f"the mesh has {mesh_devices} devices but {self.name} has "
                              f"{self.devices}{how}; use a mesh whose product is {self.devices}")


def known() -> str:
    kinds = sorted(ACCELERATORS) + sorted(ALIASES)
    return (f"{', '.join(kinds)}; slices v4-N, v5p-N (N TensorCores), v5e-N, v5litepod-N, "
            "v6e-N (N chips); GPUs as <kind>xN, e.g. h100x8")


def parse(name: str) -> Target:
    """`v5e-32`, `v4-32`, `v5litepod-16`, `v5e`, `h100`, `h100x8`, `a100-80gb` -> Target."""
    text = name.strip().lower()
    if text in ("a100", "a100x"):
        raise DeviceError("say a100-40gb or a100-80gb (the A100 comes in both sizes)")
    kind = ALIASES.get(text, text)
    if kind in ACCELERATORS:
        return Target(name, ACCELERATORS[kind], None)
    m = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
    if m and ALIASES.get(m.group(1), m.group(1)) in TPU_SLICES:
        acc = ACCELERATORS[ALIASES.get(m.group(1), m.group(1))]
        n, per = int(m.group(2)), acc.cores_per_device_in_slice_name
        if n < per or n % per:
            raise DeviceError(f"{name}: {acc.label} slice names count TensorCores ({per} per "
                              f"chip), so N must be a multiple of {per}")
        return Target(name, acc, n // per)
    m = re.fullmatch(r"([a-z0-9-]+?)x(\d+)", text)
    if m:
        kind = ALIASES.get(m.group(1), m.group(1))
        if kind in ACCELERATORS and kind not in TPU_SLICES and int(m.group(2)) > 0:
            return Target(name, ACCELERATORS[kind], int(m.group(2)))
    raise DeviceError(f"unknown device {name!r}; known: {known()}")
