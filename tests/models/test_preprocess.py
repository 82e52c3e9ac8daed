"""JAX CLIP preprocessing against transformers' CLIPImageProcessor (PIL backend, as the
transformers 4.37 that RL4VLM used). Tolerance: 1e-5 absolute on the normalised output, i.e.
the resized uint8 pixels are identical and only float rounding differs."""

import jax
import numpy as np
import pytest

from rlvlm_jax.models.preprocess import clip_preprocess, preprocessor_for, resized_shape


def _reference(images, size, crop):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(size={"shortest_edge": size},
                                 crop_size={"height": crop, "width": crop})
    return proc(images=list(images), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)


@pytest.mark.parametrize("h,w,size,crop", [
    (300, 300, 336, 336),  # upscale (gym_cards frames to CLIP-L/336)
    (500, 400, 336, 336),  # downscale with antialiasing, portrait crop
    (200, 700, 112, 112),  # strong downscale, landscape
    (37, 53, 28, 24),  # odd sizes, crop smaller than the resize
    (336, 336, 336, 336),  # no resize at all
])
def test_matches_transformers_clip_processor(h, w, size, crop):
    rng = np.random.default_rng(h * w)
    images = rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8)
    images[1] = (np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))).astype(np.uint8)
    images[2] = 255 * (np.indices((h, w)).sum(0) % 2)[..., None]  # worst case for ringing
    ours = np.asarray(jax.jit(lambda x: clip_preprocess(x, size, crop))(images))
    ref = _reference(images, size, crop)
    assert ours.shape == ref.shape == (3, crop, crop, 3)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_batched_leading_dims_and_jit_wrapper():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 3, 40, 30, 3), dtype=np.uint8)
    fn = preprocessor_for(28)
    out = np.asarray(fn(images))
    assert out.shape == (2, 3, 28, 28, 3)
    np.testing.assert_allclose(out[1, 2], np.asarray(fn(images[1, 2])), atol=0)
    assert resized_shape(40, 30, 28) == (37, 28)


def test_rejects_float_input():
    with pytest.raises(TypeError, match="uint8"):
        clip_preprocess(np.zeros((8, 8, 3), np.float32), 8)
