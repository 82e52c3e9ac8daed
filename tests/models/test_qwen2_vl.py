"""Qwen2-VL and Qwen2.5-VL against transformers: tiny random models built here (float32, CPU).

Tolerances: logits 1e-4 relative (max |ours - theirs| / max |theirs| over real positions;
measured ~1e-6), exported checkpoints reload in transformers with identical logits (1e-6
absolute), greedy decoding equal token for token, M-RoPE positions equal as integers.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from rlvlm_jax import sharding
from rlvlm_jax.models import conversion, presets, qwen_conversion
from rlvlm_jax.models.conversion import CheckpointError
from rlvlm_jax.models.qwen2_vl import (
    QWEN_PARAM_RULES,
    abstract_model,
    check_inputs,
    init_params,
    make_forward,
)
from rlvlm_jax.models.qwen_preprocess import patchify
from rlvlm_jax.models.qwen_text import mrope_positions
from rlvlm_jax.models.sampling import Sampler, SamplingConfig
from tests.models.hf_reference import padded_prompts, rel_err, setup_cache

VOCAB, IMAGE, VIDEO, START, END = 128, 100, 101, 98, 99
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # parity tests: compile quickly


@dataclasses.dataclass(frozen=True)
class Spec:
    variant: str = "qwen2_vl"
    height: int = 56  # pixels; patches of 14, merge 2
    width: int = 112
    tie: bool = False
    kv_heads: int = 2
    window: int = 56  # Qwen2.5 window side in pixels (2 merged units)
    fullatt: tuple = (1,)
    vision_layers: int = 2
    theta: float = 10000.0
    images_per_row: int = 1
    seed: int = 0

    @property
    def name(self) -> str:
        parts = [self.variant, f"{self.height}x{self.width}", f"kv{self.kv_heads}"]
        if self.variant == "qwen2_5_vl":
            parts.append(f"win{self.window}-full{'-'.join(map(str, self.fullatt))}")
        if self.tie:
            parts.append("tied")
        if self.images_per_row > 1:
            parts.append(f"{self.images_per_row}img")
        return "-".join(parts)


SPECS = [
    # non-square 4x8 patch grid (2x4 tokens)
    Spec("qwen2_vl", 56, 112),
    # tall grid, tied embeddings, one KV head, theta 1e6, two images per row
    Spec("qwen2_vl", 84, 56, tie=True, kv_heads=1, theta=1e6, images_per_row=2, seed=1),
    # 6x10 patches = 3x5 units in windows of 2x2 units: edge windows cut short
    Spec("qwen2_5_vl", 84, 140, window=56, fullatt=(1,), vision_layers=3, seed=2),
    # 8x8 patches = 4x4 units in four whole windows, full attention first
    Spec("qwen2_5_vl", 112, 112, tie=True, window=56, fullatt=(0,), seed=3),
]


def build_hf(spec: Spec):
    """A random transformers model in eval mode, float32, with non-trivial biases and norms."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=spec.kv_heads, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                 "rope_theta": spec.theta},
                bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.1,
                tie_word_embeddings=spec.tie, max_position_embeddings=512)
    ids = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START,
               vision_end_token_id=END, tie_word_embeddings=spec.tie)
    if spec.variant == "qwen2_vl":
        vision = dict(depth=spec.vision_layers, embed_dim=32, hidden_size=64, num_heads=4,
                      mlp_ratio=2, initializer_range=0.1)
        cfg, cls = Qwen2VLConfig(vision_config=vision, text_config=text, **ids), \
            Qwen2VLForConditionalGeneration
    else:
        vision = dict(depth=spec.vision_layers, hidden_size=32, intermediate_size=48,
                      num_heads=4, out_hidden_size=64, window_size=spec.window,
                      fullatt_block_indexes=list(spec.fullatt), initializer_range=0.1)
        cfg, cls = Qwen2_5_VLConfig(vision_config=vision, text_config=text, **ids), \
            Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(spec.seed)
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_q" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def make_inputs(spec: Spec, tokens: int, batch: int = 3, length: int = 0, pads=(0, 3, 5),
                seed: int = 0):
    """Left-padded rows: text, then per image <start> pads <end> text; ids/mask int32 and
    normalised channels-last images (B, [K,] H, W, 3)."""
    rng = np.random.default_rng(seed)
    k = spec.images_per_row
    length = length or max(pads) + k * (tokens + 3) + 6
    ids, mask = padded_prompts(rng, batch, length, pads, START)
    for b in range(batch):
        at = pads[b % len(pads)] + 1 + b % 2
        for _ in range(k):
            ids[b, at] = START
            ids[b, at + 1:at + 1 + tokens] = IMAGE
            ids[b, at + 1 + tokens] = END
            at += tokens + 3
    shape = (batch, k, spec.height, spec.width, 3) if k > 1 else (batch, spec.height,
                                                                   spec.width, 3)
    images = rng.standard_normal(shape).astype(np.float32)
    return ids, mask, images


def hf_kwargs(spec: Spec, ids, mask, images):
    """transformers' inputs for the same prompts: pixel_values rows of every image in order,
    one (1, h, w) grid each, and the multimodal token types."""
    kw = dict(input_ids=torch.tensor(ids, dtype=torch.long),
              attention_mask=torch.tensor(mask, dtype=torch.long))
    if images is not None:
        patches = np.asarray(patchify(jnp.asarray(images)))
        n = patches.shape[-2]
        kw.update(pixel_values=torch.tensor(patches.reshape(-1, patches.shape[-1])),
                  image_grid_thw=torch.tensor([[1, spec.height // 14, spec.width // 14]]
                                              * (patches.size // patches.shape[-1] // n)),
                  mm_token_type_ids=torch.tensor((ids == IMAGE).astype(np.int64)))
    return kw


def hf_logits(model, spec, ids, mask, images, position_ids=None):
    kw = hf_kwargs(spec, ids, mask, images)
    if position_ids is not None:
        kw["position_ids"] = torch.tensor(np.asarray(position_ids), dtype=torch.long)
    with torch.no_grad():
        return model(**kw).logits.float().numpy()


class Setup:
    """A reference model saved to disk (sharded), converted, with a compiled forward."""

    def __init__(self, spec: Spec, path: str):
        self.spec = spec
        self.hf = build_hf(spec)
        self.path = path
        self.hf.save_pretrained(path, max_shard_size="200KB")
        self.cfg, params = conversion.load_hf_checkpoint(
            path, image_size=(spec.height, spec.width))
        self.params = jax.tree.map(jnp.asarray, params)
        self.graphdef, _ = abstract_model(self.cfg)
        self.forward = make_forward(self.graphdef, compiler_options=FAST_COMPILE)
        self.ids, self.mask, self.images = make_inputs(spec, self.cfg.num_image_tokens)
        self.logits = self.forward(self.params, self.ids, self.images, self.mask)


_get = setup_cache(Setup)


@pytest.fixture(scope="module", params=SPECS, ids=lambda s: s.name)
def setup(request, tmp_path_factory):
    return _get(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return _get(SPECS[0], tmp_path_factory)


@pytest.fixture(scope="module")
def qwen25(tmp_path_factory):
    return _get(SPECS[2], tmp_path_factory)


# ------------------------------------------------------------------------------- parity
def test_logits_match_transformers(setup):
    s = setup
    assert len([f for f in os.listdir(s.path) if f.endswith(".safetensors")]) > 1
    assert s.cfg.num_image_tokens == (s.spec.height // 28) * (s.spec.width // 28)
    ref = hf_logits(s.hf, s.spec, s.ids, s.mask, s.images)
    assert rel_err(s.logits, ref, s.mask) < 1e-4


def test_positions_match_get_rope_index(setup):
    """Our on-device M-RoPE positions and rope deltas equal transformers' get_rope_index."""
    spec, hf = setup.spec, setup.hf
    tokens = setup.cfg.num_image_tokens
    ids, mask, images = make_inputs(spec, tokens, batch=4, pads=(0, 3, 5, 1), seed=5)
    kw = hf_kwargs(spec, ids, mask, images)
    theirs, delta = hf.model.get_rope_index(
        kw["input_ids"], mm_token_type_ids=kw["mm_token_type_ids"],
        image_grid_thw=kw["image_grid_thw"], attention_mask=kw["attention_mask"])
    ours, our_delta = jax.jit(mrope_positions, static_argnums=(2, 3))(
        ids, mask, IMAGE, (spec.height // 28, spec.width // 28))
    np.testing.assert_array_equal(np.asarray(ours), theirs.numpy())
    np.testing.assert_array_equal(np.asarray(our_delta), delta.numpy()[:, 0])


def test_text_only_and_hidden_states(qwen25):
    """No images: plain 1-D positions over real tokens; `hidden_states` is transformers' final
    normed hidden state (the value head's input)."""
    s = qwen25
    ids, mask = s.ids.copy(), s.mask
    ids[ids == IMAGE] = 7
    logits = s.forward(s.params, ids, None, mask)
    pos = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    assert rel_err(logits, hf_logits(s.hf, s.spec, ids, mask, None, pos), mask) < 1e-4

    hidden = jax.jit(lambda p, i, im, m: nnx.merge(s.graphdef, p).hidden_states(i, im, m),
                     compiler_options=FAST_COMPILE)(s.params, s.ids, s.images, s.mask)
    with torch.no_grad():
        theirs = s.hf.model(**hf_kwargs(s.spec, s.ids, s.mask, s.images)).last_hidden_state
    assert rel_err(hidden, theirs.numpy(), s.mask) < 1e-4


def test_patches_and_pixels_give_the_same_logits(qwen2):
    """transformers' pixel_values layout (B, N, C*T*P*P) is accepted as well as pixels."""
    s = qwen2
    patches = patchify(jnp.asarray(s.images))
    assert patches.shape == (3, s.cfg.vision.num_patches, 3 * 2 * 14 * 14)
    out = s.forward(s.params, s.ids, patches, s.mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(s.logits), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------- export
def test_export_loads_in_transformers(setup, tmp_path):
    s = setup
    cls = type(s.hf)
    conversion.export_hf_checkpoint(s.params, s.cfg, str(tmp_path), max_shard_bytes=100_000)
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    back = cls.from_pretrained(str(tmp_path)).eval()
    np.testing.assert_allclose(hf_logits(back, s.spec, s.ids, s.mask, s.images),
                               hf_logits(s.hf, s.spec, s.ids, s.mask, s.images), rtol=0,
                               atol=1e-6)
    cfg2, params2 = conversion.load_hf_checkpoint(
        str(tmp_path), image_size=(s.spec.height, s.spec.width))
    assert cfg2 == s.cfg
    jax.tree.map(np.testing.assert_array_equal, params2, jax.device_get(s.params))


def test_state_dict_conversion_equals_directory(qwen25):
    """The in-memory path (transformers-5 key layout, tied lm_head ignored) reads the same."""
    s = qwen25
    cfg, params = conversion.from_state_dict(s.hf.config.to_dict(), s.hf.state_dict(),
                                             image_size=(s.spec.height, s.spec.width))
    assert cfg == s.cfg
    jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(s.params))


# ------------------------------------------------------------------------------- decoding
T = 8


@pytest.mark.parametrize("which", [pytest.param("qwen2", marks=pytest.mark.slow), "qwen25"])
def test_greedy_generate_matches_transformers(which, request):
    """The project's Sampler (prefill + cached decode, unchanged) drives this model; greedy
    tokens equal transformers' generate, and teacher-forced logits over prompt + completion with
    `score_positions` equal transformers' on the whole sequence."""
    s = request.getfixturevalue(which)
    sampler = Sampler(s.graphdef, s.cfg, SamplingConfig(max_new_tokens=T, eos_ids=(2,),
                                                        pad_id=0),
                      compiler_options=FAST_COMPILE)
    out, cache = sampler(s.params, s.ids, s.mask, s.images, jax.random.key(0), temperature=0.0)
    ours = np.asarray(out.tokens)
    with torch.no_grad():
        full = s.hf.generate(**hf_kwargs(s.spec, s.ids, s.mask, s.images), do_sample=False,
                             max_new_tokens=T, eos_token_id=2, pad_token_id=0).numpy()
    theirs = full[:, s.ids.shape[1]:]
    theirs = np.pad(theirs, ((0, 0), (0, T - theirs.shape[1])))
    np.testing.assert_array_equal(ours, theirs)
    assert "rope_delta" in cache

    comp_mask = (np.arange(T)[None] < np.asarray(out.lengths)[:, None]).astype(np.int32)

    def teacher_forced(params, ids, mask, images, comp, comp_mask):
        model = nnx.merge(s.graphdef, params)
        pos = model.score_positions(ids, mask, comp_mask)
        embeds = jnp.concatenate([model.embed(ids, images), model.text.embed_tokens(comp)], 1)
        hidden, _ = model.text.forward(embeds, pos, jnp.concatenate([mask, comp_mask], 1))
        return model.text.logits(hidden)

    logits = jax.jit(teacher_forced, compiler_options=FAST_COMPILE)(
        s.params, s.ids, s.mask, s.images, ours, comp_mask)
    # transformers would take a generated image-pad id for a placeholder: give it embeddings
    # with the image features in the prompt only, and get_rope_index's positions.
    whole = np.concatenate([s.ids, ours], axis=1)
    mask = np.concatenate([s.mask, comp_mask], 1)
    kw = hf_kwargs(s.spec, whole, mask, s.images)
    kw["mm_token_type_ids"][:, s.ids.shape[1]:] = 0  # generated tokens are text
    with torch.no_grad():
        hf = s.hf.model
        embeds = hf.get_input_embeddings()(kw["input_ids"])
        feats = hf.get_image_features(kw["pixel_values"], kw["image_grid_thw"]).pooler_output
        embeds[kw["mm_token_type_ids"].bool()] = torch.cat(feats, dim=0)
        pos, _ = hf.get_rope_index(kw["input_ids"], mm_token_type_ids=kw["mm_token_type_ids"],
                                   image_grid_thw=kw["image_grid_thw"],
                                   attention_mask=kw["attention_mask"])
        ref = s.hf(inputs_embeds=embeds, attention_mask=kw["attention_mask"],
                   position_ids=pos).logits.numpy()
    assert rel_err(logits, ref, mask) < 1e-4


# ------------------------------------------------------------------------------- errors
def _hf_config(spec=SPECS[0]) -> dict:
    return build_hf(dataclasses.replace(spec, vision_layers=1)).config.to_dict()


def test_config_errors_are_named():
    hf = _hf_config()
    with pytest.raises(CheckpointError, match="model_type is 'llava'"):
        qwen_conversion.config_from_hf({**hf, "model_type": "llava"}, 56)
    with pytest.raises(CheckpointError, match="does not divide the merge size"):
        qwen_conversion.config_from_hf(hf, (56, 98))  # 7 patches: not whole 2x2 blocks
    with pytest.raises(CheckpointError, match="image_size is required"):
        qwen_conversion.config_from_hf(hf, None)
    bad = json.loads(json.dumps(hf))
    bad["text_config"]["use_sliding_window"] = True
    with pytest.raises(CheckpointError, match="use_sliding_window"):
        qwen_conversion.config_from_hf(bad, 56)
    bad = json.loads(json.dumps(hf))
    bad["vision_config"]["patch_size"] = [14, 16]
    with pytest.raises(CheckpointError, match="non-square patches"):
        qwen_conversion.config_from_hf(bad, 56)


def test_processor_config_mismatch_is_named(qwen2, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(qwen2.path, path)
    size = (qwen2.spec.height, qwen2.spec.width)
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "Qwen2VLImageProcessor", "patch_size": 14, "merge_size": 2,
         "temporal_patch_size": 2, "min_pixels": 3136, "max_pixels": 12845056}))
    conversion.load_hf_checkpoint(str(path), image_size=size)  # matching: fine
    (path / "preprocessor_config.json").write_text(json.dumps({"merge_size": 4,
                                                                "resample": 2}))
    with pytest.raises(CheckpointError, match=r"merge_size 4 != .*spatial_merge_size 2.*"
                                              r"resample 2 is not supported"):
        conversion.load_hf_checkpoint(str(path), image_size=size)


def test_missing_and_misshaped_tensors_are_named(qwen2, tmp_path):
    sd = {k: v.numpy() for k, v in qwen2.hf.state_dict().items()}
    sd.pop("model.language_model.layers.1.mlp.up_proj.weight")
    sd["model.visual.blocks.0.attn.qkv.weight"] = sd["model.visual.blocks.0.attn.qkv.weight"][1:]
    sd["model.visual.blocks.0.attn.extra"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError) as e:
        conversion.from_state_dict(qwen2.hf.config.to_dict(), sd, image_size=(56, 112))
    msg = str(e.value)
    assert "text.layers.1.mlp.up_proj.weight" in msg and "missing" in msg
    assert "attn.qkv.weight" in msg and "(95, 32)" in msg and "(96, 32)" in msg
    assert "model.visual.blocks.0.attn.extra" in msg


def test_video_and_other_resolutions_are_rejected(qwen2):
    cfg = qwen2.cfg
    check_inputs(qwen2.ids, qwen2.images, cfg)
    ids = qwen2.ids.copy()
    ids[0, -1] = VIDEO
    with pytest.raises(ValueError, match="video inputs are not supported"):
        check_inputs(ids, qwen2.images, cfg)
    with pytest.raises(ValueError, match="dynamic resolution"):
        check_inputs(qwen2.ids, np.zeros((3, 56, 56, 3), np.float32), cfg)
    with pytest.raises(ValueError, match=r"rows \[0, 1, 2\] have \[8, 8, 8\] image pad tokens"):
        check_inputs(qwen2.ids, np.zeros((3, 2, 56, 112, 3), np.float32), cfg)


# ------------------------------------------------------------------------------- misc
def test_random_init_model_exports(tmp_path):
    """A model initialised by us (no checkpoint) exports to a directory transformers loads with
    our logits."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    spec = SPECS[3]
    hf_cfg = qwen_conversion.config_from_hf(_hf_config(spec), (spec.height, spec.width))
    cfg = dataclasses.replace(hf_cfg, vision=dataclasses.replace(hf_cfg.vision, num_layers=1,
                                                                  fullatt_block_indexes=(0,)))
    graphdef, params = init_params(cfg, seed=3)
    conversion.export_hf_checkpoint(params, cfg, str(tmp_path))
    back = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    ids, mask, images = make_inputs(spec, cfg.num_image_tokens, seed=4)
    ours = make_forward(graphdef, compiler_options=FAST_COMPILE)(params, ids, images, mask)
    assert rel_err(ours, hf_logits(back, spec, ids, mask, images), mask) < 1e-4


PRESET_SIZES = {"qwen2-vl-2b": 2.21e9, "qwen2-vl-7b": 8.29e9, "qwen2.5-vl-3b": 3.75e9,
                "qwen2.5-vl-7b": 8.29e9}  # the hub model cards' parameter counts


def _table_size(cfg) -> int:
    return sum(int(np.prod(shape)) for shape in
               {row.key: row.hf_shape for row in qwen_conversion.param_table(cfg)}.values())


@pytest.mark.parametrize("name", sorted(PRESET_SIZES))
def test_presets_have_the_published_sizes(name):
    cfg = presets.get_qwen(name)
    cfg.validate()
    assert cfg.num_image_tokens == 256  # 448 x 448 px
    assert abs(_table_size(cfg) - PRESET_SIZES[name]) / PRESET_SIZES[name] < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PRESET_SIZES))
def test_presets_trace(name):
    """Shape-only construction (~3 s each): the model's params are the conversion table's."""
    cfg = presets.get_qwen(name)
    _, shapes = abstract_model(cfg)
    assert sum(x.size for x in jax.tree.leaves(shapes)) == _table_size(cfg)


@pytest.mark.slow
def test_cli_round_trip(qwen2, tmp_path):
    """The command line (two interpreter starts with jax: ~5 s)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = lambda *a: subprocess.run([sys.executable, "-m", "rlvlm_jax.models.conversion",
                                     *a], capture_output=True, text=True, env=env)
    ours, hf = tmp_path / "ours", tmp_path / "hf"
    r = run("to-jax", qwen2.path, str(ours), "--image-size", "56x112")
    assert r.returncode == 0, r.stderr
    assert run("to-hf", str(ours), str(hf)).returncode == 0
    _, a = conversion.load_hf_checkpoint(qwen2.path, image_size=(56, 112))
    _, b = conversion.load_hf_checkpoint(str(hf), image_size=(56, 112))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    bad = run("to-jax", qwen2.path, str(tmp_path / "x"), "--image-size", "56x100")
    assert bad.returncode == 2 and "does not divide the merge size" in bad.stderr


# ------------------------------------------------------------------------------- sharding
def _spec(path: str, rules):
    return next((spec for pattern, spec in rules if re.search(pattern, path)), None)


def test_partition_rules_cover_every_parameter(qwen2, qwen25):
    """QWEN_PARAM_RULES open the project's one table; with it every param has a rule of at most
    its rank, and the params those rules do not name get what the rest of the table says."""
    rules = sharding.PARAM_RULES
    assert rules[:len(QWEN_PARAM_RULES)] == QWEN_PARAM_RULES
    rest = rules[len(QWEN_PARAM_RULES):]
    for s in (qwen2, qwen25):
        for path, leaf in jax.tree_util.tree_leaves_with_path(s.params):
            name = sharding._path_str(path)
            spec = _spec(name, rules)
            assert spec is not None and len(spec) <= leaf.ndim, name
            assert sharding.spec_for(name) == spec, name
            if _spec(name, QWEN_PARAM_RULES) is None:
                assert _spec(name, rest) == spec, name
    for name in PRESET_SIZES:
        for row in qwen_conversion.param_table(presets.get_qwen(name)):
            assert _spec(row.ours, rules) is not None, row.ours


@pytest.mark.slow
def test_sharded_forward_matches_single_device(qwen25):
    """On a (2, 2, 2) mesh of simulated devices, params placed by the one rule table."""
    s = qwen25
    mesh = sharding.make_mesh((2, 2, 2))
    sh = sharding.Shardings(mesh, s.params)
    ids, mask, images = make_inputs(s.spec, s.cfg.num_image_tokens, batch=4,
                                    pads=(0, 3, 5, 1))
    ref = make_forward(s.graphdef, compiler_options=FAST_COMPILE)(s.params, ids, images, mask)
    fwd = sh.jit(lambda p, i, im, m: nnx.merge(s.graphdef, p)(i, im, m), "pbbb",
                 compiler_options=FAST_COMPILE)
    out = fwd(sharding.shard_params(s.params, mesh), ids, images, mask)
    assert rel_err(out, ref, mask) < 1e-5


@pytest.mark.slow
def test_bfloat16_params_and_compute(qwen25):
    s = qwen25
    cfg, params = conversion.load_hf_checkpoint(s.path, "bfloat16",
                                                     image_size=(s.spec.height, s.spec.width))
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(jnp.bfloat16)}
    graphdef, _ = abstract_model(cfg, dtype=jnp.bfloat16)
    out = make_forward(graphdef, compiler_options=FAST_COMPILE)(
        jax.tree.map(jnp.asarray, params), s.ids, s.images, s.mask)
    assert out.dtype == jnp.float32
    assert rel_err(out, s.logits, s.mask) < 5e-2
