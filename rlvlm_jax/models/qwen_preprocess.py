"""Qwen2-VL / Qwen2.5-VL image preprocessing in JAX, for one fixed resolution.

Reproduces transformers' `Qwen2VLImageProcessor` (its PIL backend, `Qwen2VLImageProcessorPil`)
for uint8 frames: resize to `smart_resize(h, w)` (both sides multiples of patch x merge = 28 px,
pixel count within [min_pixels, max_pixels]) with PIL's antialiased bicubic filter, divide by
255, normalise by the processor's mean/std (CLIP's by default), and patchify into the
`pixel_values` layout, (num_patches, C * T * P * P) with the image repeated over the
`temporal_patch_size` frames and patches in merge-block order.

The resize reproduces PIL's two fixed-point passes exactly (`preprocess.pil_resize_weights`), so
the resized uint8 pixels are identical to PIL's and the output differs from transformers only by
float rounding of the rescale and normalisation (measured: <= 4.8e-7 absolute, one float32 ulp
at 2; tested at 1e-6).

The target size is static: `frame_hw` -> `smart_resize` is evaluated in Python, and the model's
fixed grid must equal it (`check_processor`), so a frame reaches the model exactly as the
transformers processor would have prepared it.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from rlvlm_jax.models.preprocess import CLIP_MEAN, CLIP_STD, pil_resize

BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, the processor's default `resample`


@dataclasses.dataclass(frozen=True)
class ProcessorConfig:
    """The fields of a Qwen2-VL `preprocessor_config.json` that the pixels depend on."""

    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    rescale_factor: float = 1 / 255
    resample: int = BICUBIC
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    @classmethod
    def from_hf(cls, d: dict) -> ProcessorConfig:
        """From a `preprocessor_config.json` dict (either the `min_pixels`/`max_pixels` or the
        `size: {shortest_edge, longest_edge}` spelling)."""
        size = d.get("size") or {}
        kw = dict(
            min_pixels=d.get("min_pixels", size.get("shortest_edge", cls.min_pixels)),
            max_pixels=d.get("max_pixels", size.get("longest_edge", cls.max_pixels)),
        )
        for name in ("patch_size", "temporal_patch_size", "merge_size", "rescale_factor",
                     "resample", "do_resize", "do_rescale", "do_normalize"):
            if d.get(name) is not None:
                kw[name] = d[name]
        for name in ("image_mean", "image_std"):
            if d.get(name) is not None:
                kw[name] = tuple(float(x) for x in d[name])
        return cls(**kw)


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """The processor's target size: each side rounded to a multiple of `factor`, then scaled
    (keeping the aspect ratio) into [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {height}x{width} exceeds 200")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def check_processor(proc: ProcessorConfig, vision, frame_hw: tuple[int, int] | None = None
                    ) -> None:
    """Raise a readable ValueError when a processor config does not produce the model's fixed
    grid: different patch/temporal/merge sizes, an unsupported resample filter, or (given the
    frames' size) a `smart_resize` target other than the model's image size."""
    errors = []
    for ours, theirs in (("patch_size", "patch_size"),
                         ("temporal_patch_size", "temporal_patch_size"),
                         ("spatial_merge_size", "merge_size")):
        if getattr(vision, ours) != getattr(proc, theirs):
            errors.append(f"{theirs} {getattr(proc, theirs)} != the vision tower's "
                          f"{ours} {getattr(vision, ours)}")
    if proc.do_resize and proc.resample != BICUBIC:
        errors.append(f"resample {proc.resample} is not supported (only bicubic, {BICUBIC})")
    if not (proc.do_rescale and proc.do_normalize):
        errors.append("do_rescale and do_normalize must both be on")
    if len(proc.image_mean) != vision.num_channels or len(proc.image_std) != vision.num_channels:
        errors.append(f"image_mean/image_std need {vision.num_channels} channels")
    if frame_hw is not None and not errors:
        target = (vision.image_height, vision.image_width)
        factor = proc.patch_size * proc.merge_size
        got = (smart_resize(*frame_hw, factor, proc.min_pixels, proc.max_pixels)
               if proc.do_resize else tuple(frame_hw))
        if got != target:
            errors.append(f"the processor would turn {frame_hw[0]}x{frame_hw[1]} frames into "
                          f"{got[0]}x{got[1]} px, but the model's fixed grid is "
                          f"{target[0]}x{target[1]} px (set min_pixels/max_pixels or the "
                          f"model's image size so that they agree)")
    if errors:
        raise ValueError("processor config does not match the model: " + "; ".join(errors))


def resize(images: jax.Array, height: int, width: int) -> jax.Array:
    """uint8 (..., h, w, C) -> int32 (..., height, width, C) with PIL's bicubic resize."""
    return pil_resize(images, height, width)


def resize_normalize(frames: jax.Array, height: int, width: int, mean=CLIP_MEAN, std=CLIP_STD,
                     rescale_factor: float = 1 / 255) -> jax.Array:
    """uint8 frames (..., h, w, C) -> float32 (..., height, width, C): the model's channels-last
    image input. Jittable; shapes are static."""
    if frames.dtype != jnp.uint8:
        raise TypeError(f"expected uint8 frames, got {frames.dtype}")
    x = resize(frames, height, width).astype(jnp.float32) * jnp.float32(rescale_factor)
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def patchify(images: jax.Array, patch_size: int = 14, temporal_patch_size: int = 2,
             merge_size: int = 2) -> jax.Array:
    """Channels-last images (..., H, W, C) -> transformers' `pixel_values` rows
    (..., N, C * T * P * P): patches in merge-block order, each a still image repeated over the
    T frames, flattened (C, T, P, P)."""
    *lead, hgt, wid, c = images.shape
    p, m, t = patch_size, merge_size, temporal_patch_size
    gh, gw = hgt // p, wid // p
    if gh * p != hgt or gw * p != wid or gh % m or gw % m:
        raise ValueError(f"image {hgt}x{wid} px is not a whole number of {p * m} px merge blocks")
    x = images.reshape(*lead, gh // m, m, p, gw // m, m, p, c)
    n = len(lead)
    # -> (..., gh/m, gw/m, m, m, C, P, P)
    x = x.transpose(*range(n), n, n + 3, n + 1, n + 4, n + 6, n + 2, n + 5)
    x = jnp.broadcast_to(x[..., None, :, :], (*x.shape[:-2], t, p, p))
    return x.reshape(*lead, gh * gw, c * t * p * p)


def qwen_preprocess(frames: jax.Array, height: int, width: int, proc: ProcessorConfig | None = None
                    ) -> jax.Array:
    """uint8 frames (..., h, w, C) -> `pixel_values` rows (..., N, C*T*P*P) of a fixed
    `height x width` image, as transformers' processor makes them."""
    proc = proc or ProcessorConfig()
    x = resize_normalize(frames, height, width, proc.image_mean, proc.image_std,
                         proc.rescale_factor)
    return patchify(x, proc.patch_size, proc.temporal_patch_size, proc.merge_size)


def preprocessor_for(vision, frame_hw: tuple[int, int], proc: ProcessorConfig | None = None):
    """A jitted uint8 frames (..., h, w, C) -> model images (..., H, W, C) for a tower with the
    fixed size H x W; checks first (host side) that transformers' processor would also resize
    `frame_hw` frames to H x W."""
    proc = proc or ProcessorConfig(patch_size=vision.patch_size,
                                   temporal_patch_size=vision.temporal_patch_size,
                                   merge_size=vision.spatial_merge_size)
    check_processor(proc, vision, frame_hw)
    return jax.jit(functools.partial(
        resize_normalize, height=vision.image_height, width=vision.image_width,
        mean=tuple(proc.image_mean), std=tuple(proc.image_std),
        rescale_factor=proc.rescale_factor))
