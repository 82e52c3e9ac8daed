"""JAX Qwen2-VL preprocessing against transformers' Qwen2VLImageProcessor (PIL backend).

Tolerance: 1e-6 absolute on the normalised patches (measured max 4.8e-7, one float32 ulp at 2):
the resized uint8 pixels are identical to PIL's and only float rounding of rescale/normalise
differs.
"""

import jax
import numpy as np
import pytest

from rlvlm_jax.models.qwen_preprocess import (
    ProcessorConfig,
    check_processor,
    preprocessor_for,
    qwen_preprocess,
    smart_resize,
)
from rlvlm_jax.models.qwen_vision import QwenVisionConfig


def _processor(**kw):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    return Qwen2VLImageProcessorPil(**kw)


def _frames(h, w, n=3):
    rng = np.random.default_rng(h * w)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    images[1] = (np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))).astype(np.uint8)
    images[2] = 255 * (np.indices((h, w)).sum(0) % 2)[..., None]  # worst case for ringing
    return images


@pytest.mark.parametrize("h,w,kw", [
    (300, 300, {}),  # upscale to 308 x 308
    (500, 400, {"max_pixels": 200_000}),  # antialiased downscale into max_pixels
    (37, 53, {}),  # below min_pixels: upscale to 56 x 84
    (56, 112, {}),  # already on the grid: no resize
    (210, 640, {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}),  # other stats
])
def test_matches_transformers_processor(h, w, kw):
    frames = _frames(h, w)
    hf = _processor(**kw)
    proc = ProcessorConfig.from_hf(hf.to_dict())
    ref = hf(images=list(frames), return_tensors="np")
    th, tw = smart_resize(h, w, 28, proc.min_pixels, proc.max_pixels)
    assert [list(g) for g in ref["image_grid_thw"]] == [[1, th // 14, tw // 14]] * 3
    ours = np.asarray(jax.jit(lambda x: qwen_preprocess(x, th, tw, proc))(frames))
    assert ours.shape == (3, th * tw // 196, 3 * 2 * 14 * 14)
    np.testing.assert_allclose(ours.reshape(-1, ours.shape[-1]), ref["pixel_values"],
                               atol=1e-6, rtol=0)


def test_preprocessor_for_checks_the_fixed_grid():
    vision = QwenVisionConfig(image_height=308, image_width=308)
    fn = preprocessor_for(vision, (300, 300))
    out = np.asarray(fn(_frames(300, 300)[:2]))
    assert out.shape == (2, 308, 308, 3) and out.dtype == np.float32
    with pytest.raises(ValueError, match="would turn 500x400 frames into 504x392 px"):
        preprocessor_for(vision, (500, 400))
    with pytest.raises(ValueError, match="merge_size 4 != the vision tower's spatial_merge_size"):
        check_processor(ProcessorConfig(merge_size=4), vision)
    with pytest.raises(TypeError, match="uint8"):
        fn(np.zeros((1, 300, 300, 3), np.float32))
