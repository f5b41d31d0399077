"""The chunked backbone path on tiny random Qwen2.5-VL and Qwen3-VL (real transformers classes)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers.video_utils import VideoMetadata

from resadapt.backbone import Backbone, ChunkedVideo
from resadapt.errors import BackboneError
from resadapt.geometry import Geometry
from resadapt.world import TINY_BACKBONES

QUESTION = "What is the stripe direction on the green card?"


@pytest.fixture(scope="module", params=TINY_BACKBONES)
def backbone(request):
    return Backbone.load(request.param)


def clip(backbone, num_frames=8, step=10, source_fps=10.0, size=(120, 160), seed=0):
    """Frames at the base size, sampled every ``step`` source frames, with their metadata."""
    h, w = backbone.geometry.base_size(*size)
    frames = np.random.default_rng(seed).integers(0, 255, (num_frames, h, w, 3), dtype=np.uint8)
    indices = np.arange(num_frames) * step
    metadata = VideoMetadata(
        total_num_frames=num_frames * step, fps=source_fps, frames_indices=indices.tolist()
    )
    return frames, indices / source_fps, metadata


def chunked(frames, timestamps, sizes=None, f=2):
    chunks = []
    for k in range(len(frames) // f):
        pair = frames[k * f : (k + 1) * f]
        if sizes is not None:
            import cv2

            h, w = sizes[k]
            pair = np.stack([cv2.resize(x, (w, h), interpolation=cv2.INTER_AREA) for x in pair])
        chunks.append(pair)
    span = timestamps[-1] - timestamps[0]
    return ChunkedVideo(
        chunks=chunks,
        timestamps=timestamps.reshape(-1, f),
        sample_fps=(len(timestamps) - 1) / span,
    )


def native_inputs(backbone, frames, metadata, text=None):
    """The model's own single-video path: one video item, the processor's stock positions;
    ``text``: the templated prompt (default: the one-turn prompt of QUESTION)."""
    return backbone.processor(
        text=[text or backbone.prompt(QUESTION)],
        videos=[frames],
        video_metadata=[metadata],
        do_resize=False,
        do_sample_frames=False,
        return_tensors="pt",
    )


def test_geometry_comes_from_the_config(backbone):
    vision = backbone.model.config.vision_config
    assert backbone.geometry.factor == vision.patch_size * vision.spatial_merge_size
    assert backbone.geometry.factor == (28 if backbone.family == "qwen2_5_vl" else 32)
    assert backbone.geometry.frames_per_chunk == vision.temporal_patch_size


def test_chunked_equals_native_at_uniform_scale(backbone):
    frames, timestamps, metadata = clip(backbone)
    native = native_inputs(backbone, frames, metadata)
    ours = backbone.prepare([chunked(frames, timestamps)], [QUESTION])
    assert torch.equal(native["input_ids"], ours["input_ids"])
    with torch.no_grad():
        ref = backbone.model(**native).logits
        got = backbone.model(**ours).logits
    assert (ref - got).abs().max().item() <= 1e-4


def test_chunked_generation_equals_native(backbone):
    frames, timestamps, metadata = clip(backbone, seed=1)
    native = native_inputs(backbone, frames, metadata)
    ours = backbone.prepare([chunked(frames, timestamps)], [QUESTION])
    kw = {"max_new_tokens": 6, "do_sample": False, "min_new_tokens": 6}
    with torch.no_grad():
        ref = backbone.model.generate(**native, **kw)
        got = backbone.model.generate(**ours, **kw)
    assert torch.equal(ref, got)


def test_true_sampling_fps_reaches_the_processor():
    bb = Backbone.load("tiny-random-qwen2.5-vl")
    # 8 frames every 15 source frames at 30 fps: the true sampling rate is 2 fps
    frames, timestamps, metadata = clip(bb, step=15, source_fps=30.0)
    native = native_inputs(bb, frames, metadata)
    assert native["second_per_grid_ts"].tolist() == [1.0]  # 2 frames per patch / 2 fps
    ours = bb.prepare([chunked(frames, timestamps)], [QUESTION])
    assert ours["second_per_grid_ts"].tolist() == [1.0] * 4
    # temporal positions follow the real time: tokens_per_second × seconds between chunks
    video = ours["mm_token_type_ids"][0] == 2
    t_pos = ours["position_ids"][1, 0, video].unique().tolist()
    tps = bb.model.config.vision_config.tokens_per_second
    start = t_pos[0]
    assert [t - start for t in t_pos] == [
        int(tps * (timestamps[2 * k] - timestamps[0])) for k in range(4)
    ]
    # without metadata the processor silently assumes a default fps: the bug this guards against
    bare = bb.processor(
        text=[bb.prompt(QUESTION)],
        videos=[frames],
        do_resize=False,
        do_sample_frames=False,
        return_tensors="pt",
    )
    assert bare["second_per_grid_ts"].tolist() != [1.0]


def test_qwen3_timestamps_are_the_chunks_true_times():
    bb = Backbone.load("tiny-random-qwen3-vl")
    frames, timestamps, _ = clip(bb, step=7, source_fps=29.97)
    text = bb.tokenizer.decode(
        bb.prepare([chunked(frames, timestamps)], [QUESTION])["input_ids"][0]
    )
    for k in range(4):
        mid = (timestamps[2 * k] + timestamps[2 * k + 1]) / 2
        assert f"<{mid:.1f} seconds>" in text


def test_predicted_tokens_equal_processor_tokens(backbone):
    g: Geometry = backbone.geometry
    frames, timestamps, _ = clip(backbone, size=(360, 640))
    base = frames.shape[1:3]
    scales = [1.0, 0.3, 0.55, 0.8]
    sizes = [g.scaled_size(*base, s) for s in scales]
    inputs = backbone.prepare([chunked(frames, timestamps, sizes)], [QUESTION])
    assert backbone.chunk_tokens(inputs) == [g.tokens(*hw) for hw in sizes]
    assert int((inputs["input_ids"] == backbone.processor.video_token_id).sum()) == sum(
        g.tokens(*hw) for hw in sizes
    )


def test_batched_mixed_sizes_match_single_rows(backbone):
    """Training batches M allocations of one video: left padding must not change a row."""
    g = backbone.geometry
    frames, timestamps, _ = clip(backbone)
    base = frames.shape[1:3]
    videos = [
        chunked(frames, timestamps, [g.scaled_size(*base, s) for s in scales])
        for scales in ([1.0, 1.0, 0.3, 0.3], [0.3, 0.5, 1.0, 0.2])
    ]
    answers = ["horizontal", "A"]
    batch = backbone.answer_logprob(videos, [QUESTION] * 2, answers)
    single = torch.cat(
        [
            backbone.answer_logprob([v], [QUESTION], [a])
            for v, a in zip(videos, answers, strict=True)
        ]
    )
    assert torch.allclose(batch, single, atol=1e-4)


def test_answer_logprob_matches_teacher_forced_loss(backbone):
    frames, timestamps, _ = clip(backbone)
    video = chunked(frames, timestamps)
    answer = "vertical"
    logp = backbone.answer_logprob([video], [QUESTION], [answer])[0]
    inputs = backbone.prepare([video], [QUESTION], [answer])
    n = len(backbone.tokenizer(answer + backbone.tokenizer.eos_token)["input_ids"])
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, -n:] = inputs["input_ids"][:, -n:]
    with torch.no_grad():
        loss = backbone.model(**inputs, labels=labels).loss
    assert torch.isclose(logp, -loss * n, atol=1e-4)


def test_stream_yields_the_same_answer_as_generate(backbone):
    frames, timestamps, _ = clip(backbone)
    inputs = backbone.prepare([chunked(frames, timestamps)], [QUESTION])
    assert "".join(backbone.stream(inputs, 8)).strip() == backbone.generate(inputs, 8)[0]


def test_unknown_backbone_is_a_boundary_error(tmp_path):
    with pytest.raises(BackboneError, match="cannot load backbone"):
        Backbone.load(str(tmp_path))


def test_saved_tiny_backbone_loads_through_the_auto_classes(tmp_path):
    bb = Backbone.load("tiny-random-qwen2.5-vl")
    bb.model.save_pretrained(tmp_path)
    bb.processor.save_pretrained(tmp_path)
    again = Backbone.load(str(tmp_path))
    assert again.geometry == bb.geometry
    frames, timestamps, _ = clip(bb)
    inputs = bb.prepare([chunked(frames, timestamps)], [QUESTION])
    with torch.no_grad():
        assert torch.allclose(bb.model(**inputs).logits, again.model(**inputs).logits, atol=1e-5)


def test_max_pixels_caps_the_base_size():
    bb = Backbone.load("tiny-random-qwen2.5-vl", max_pixels=84 * 84)
    assert bb.geometry.max_pixels == 84 * 84 and bb.geometry.base_size(720, 720) == (84, 84)
    wide = Backbone.load("tiny-random-qwen3-vl")
    assert wide.geometry.max_pixels <= 768 * 32 * 32


CORE = (
    "geometry video backbone policies pipeline relevance capo data grading errors cli registry "
    "assets benchmark_readers rollout train_config train_data trainer ui"
)


def test_core_imports_nothing_from_the_world():
    modules = ", ".join(f"resadapt.{m}" for m in CORE.split())
    code = (
        f"import sys, {modules}; "
        "bad = sorted(m for m in sys.modules if m.startswith('resadapt.world')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_world_registers_the_tiny_backbones_without_loading_transformers():
    """What every entry point does (the core never imports the world): import resadapt.world."""
    code = (
        "import sys, resadapt.world; from resadapt.registry import registered_backbones; "
        "from resadapt.world import TINY_BACKBONES; "
        "assert set(TINY_BACKBONES) <= set(registered_backbones()), registered_backbones(); "
        "assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
