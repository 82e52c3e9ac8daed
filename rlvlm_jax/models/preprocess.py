"""CLIP image preprocessing in JAX: environment frames reach the model without leaving the device.

Reproduces transformers' CLIPImageProcessor (PIL backend, as in the transformers 4.37 that
RL4VLM used): resize the shortest side to `size` with PIL's antialiased bicubic filter, centre
crop, divide by 255, normalise by CLIP's mean/std. PIL resamples 8-bit images in two separable
passes (horizontal, then vertical) with 22-bit fixed-point weights and rounds to uint8 after each
pass; we do the same with integer matmuls, so the resized uint8 pixels are bit-identical and the
output differs from transformers only by float rounding (tested at 1e-5).

Only the cropped rows and columns are computed. Weight matrices depend on static shapes only and
are built with NumPy at trace time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_PRECISION_BITS = 32 - 8 - 2  # PIL's fixed-point precision for 8-bit images


def _bicubic(x: np.ndarray) -> np.ndarray:
    """PIL's bicubic kernel (a = -0.5), support 2."""
    a = -0.5
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


@functools.lru_cache(maxsize=64)
def pil_resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) int64 fixed-point weights of PIL's antialiased bicubic resize
    (Resample.c: precompute_coeffs + normalize_coeffs_8bpc)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    w = np.zeros((out_size, in_size), np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        taps = _bicubic((np.arange(xmin, xmax) - center + 0.5) / filterscale)
        total = taps.sum()
        w[xx, xmin:xmax] = taps / total if total != 0.0 else taps
    fixed = w * (1 << _PRECISION_BITS)
    return np.where(fixed < 0, np.trunc(fixed - 0.5), np.trunc(fixed + 0.5)).astype(np.int64)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Shortest side -> size, longer side scaled and truncated (transformers' rule)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _pass(x: jax.Array, weights: np.ndarray, axis: int) -> jax.Array:
    """One PIL resampling pass along `axis` of an int32 image, rounded and clipped to 0..255.

    int32 accumulation cannot overflow: 255 x sum|w| < 2**31 for bicubic weights (sum|w| < 1.3).
    """
    w = jnp.asarray(weights, jnp.int32)
    x = jnp.moveaxis(x, axis, -1)
    acc = jnp.matmul(x, w.T, preferred_element_type=jnp.int32) + (1 << (_PRECISION_BITS - 1))
    return jnp.moveaxis(jnp.clip(acc >> _PRECISION_BITS, 0, 255), -1, axis)


def _resize_window(images: jax.Array, nh: int, nw: int, top: int, left: int, crop_h: int,
                   crop_w: int) -> jax.Array:
    """PIL's bicubic resize to (nh, nw), computing only the window [top:top + crop_h,
    left:left + crop_w]. PIL skips a pass whose size does not change; horizontal first."""
    h, w = images.shape[-3], images.shape[-2]
    x = images.astype(jnp.int32)
    if nw != w:
        x = _pass(x, pil_resize_weights(w, nw)[left:left + crop_w], axis=-2)
    else:
        x = x[..., :, left:left + crop_w, :]
    if nh != h:
        x = _pass(x, pil_resize_weights(h, nh)[top:top + crop_h], axis=-3)
    else:
        x = x[..., top:top + crop_h, :, :]
    return x


def pil_resize(images: jax.Array, height: int, width: int) -> jax.Array:
    """uint8 (..., h, w, C) -> int32 (..., height, width, C): PIL's bicubic `Image.resize`."""
    return _resize_window(images, height, width, 0, 0, height, width)


def resize_and_crop(images: jax.Array, size: int, crop: int) -> jax.Array:
    """uint8 (..., H, W, C) -> int32 (..., crop, crop, C): PIL bicubic resize of the shortest
    side to `size`, then transformers' centre crop (offsets floor((new - crop) / 2))."""
    h, w = images.shape[-3], images.shape[-2]
    nh, nw = resized_shape(h, w, size)
    if crop > nh or crop > nw:
        raise ValueError(f"crop {crop} is larger than the resized image {(nh, nw)}")
    return _resize_window(images, nh, nw, (nh - crop) // 2, (nw - crop) // 2, crop, crop)


def clip_preprocess(images: jax.Array, size: int = 336, crop: int | None = None,
                    mean=CLIP_MEAN, std=CLIP_STD) -> jax.Array:
    """uint8 frames (..., H, W, 3) -> float32 model input (..., crop, crop, 3), channels last.

    Jittable; H and W are static. Defaults are LLaVA's CLIP-L/336 settings.
    """
    if images.dtype != jnp.uint8:
        raise TypeError(f"expected uint8 frames, got {images.dtype}")
    crop = size if crop is None else crop
    x = resize_and_crop(images, size, crop).astype(jnp.float32) * (1.0 / 255.0)
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def preprocessor_for(image_size: int, mean=CLIP_MEAN, std=CLIP_STD):
    """A jitted frames -> pixels function for a tower of `image_size` (resize and crop to it)."""
    return jax.jit(functools.partial(clip_preprocess, size=image_size, crop=image_size,
                                     mean=tuple(mean), std=tuple(std)))

