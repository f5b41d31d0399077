"""Video decoding and sampling on real H.264 files written by tests.media (fast, CPU, offline)."""

from __future__ import annotations

import logging
import math

import decord
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resadapt import decoders
from resadapt import video as video_module
from resadapt.decoders import DECODE_GROUP
from resadapt.errors import BudgetError, ResAdaptError, VideoError
from resadapt.geometry import Geometry
from resadapt.video import (
    MAX_SAMPLED_FRAMES,
    SampledVideo,
    check_sampling,
    load_video,
    resize_frames,
    sample_indices,
    thumbnails,
)
from tests.media import (
    VFR_TIME_BASE,
    frame_index,
    vfr_pts,
    write_text_as_video,
    write_truncated,
    write_video,
    write_zeroed_media,
)

GEOMETRY = Geometry(factor=28, min_pixels=4 * 28 * 28, max_pixels=128 * 96)  # base (84, 140)
BACKENDS = ["torchcodec", "decord", "pyav"]


@pytest.fixture
def decord_first(monkeypatch):
    """The decord → PyAV fallback on its own (PyAV is first by default; torchcodec left out)."""
    monkeypatch.setattr(video_module, "BACKEND_ORDER", ("decord", "pyav"))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The module's video files, written once."""
    root = tmp_path_factory.mktemp("media")
    files = {
        "plain": write_video(root / "plain.mp4", num_frames=30, fps=10),
        "vfr": write_video(root / "vfr.mp4", num_frames=30, fps=10, vfr=True),
        "faststart": write_video(root / "faststart.mp4", num_frames=60, faststart=True),
        "audio": write_video(root / "audio.m4a", audio_only=True),
        "text": write_text_as_video(root / "notes.mp4"),
        "dir": root / "folder.mp4",
    }
    files["dir"].mkdir()
    files["truncated"] = write_truncated(files["plain"], root / "truncated.mp4")
    files["truncated_faststart"] = write_truncated(files["faststart"], root / "cut.mp4")
    files["zeroed"] = write_zeroed_media(files["faststart"], root / "zeroed.mp4")
    (root / "empty.mp4").write_bytes(b"")
    files["empty"] = root / "empty.mp4"
    return files


def decoded_indices(video: SampledVideo) -> list[int]:
    return [frame_index(frame) for frame in video.frames]


# ------------------------------------------------------------------------------ sampling rules
@pytest.mark.parametrize(
    "total, source_fps, kwargs, expected_count",
    [
        (300, 30.0, dict(fps=2.0), 20),  # 10 s at 2 fps
        (300, 30.0, dict(fps=10.0), 64),  # clamped to max_frames
        (30, 30.0, dict(fps=2.0), 4),  # 1 s at 2 fps is 2 frames: raised to min_frames
        (300, 30.0, dict(fps=1.5), 14),  # 15 frames floored to an even count
        (3, 30.0, dict(fps=2.0), 2),  # fewer frames than min_frames: clamped to total, floored
        (300, 30.0, dict(num_frames=5), 6),  # explicit count rounded half up to even
        (300, 30.0, dict(num_frames=1), 2),
        (300, 30.0, dict(num_frames=100), 100),  # an explicit count ignores max_frames
        (300, 30.0, dict(fps=2.0, min_frames=5, max_frames=9), 8),  # 20 → max 9 → even 8
    ],
)
def test_sample_count_rules(total, source_fps, kwargs, expected_count):
    indices = sample_indices(total, source_fps, **kwargs)
    assert len(indices) == expected_count and indices.dtype == np.int64
    assert indices[0] == 0 and indices[-1] == total - 1


def test_sample_indices_are_rounded_linspace():
    expected = np.round(np.linspace(0, 99, 8)).astype(np.int64)
    np.testing.assert_array_equal(sample_indices(100, 25.0, num_frames=8), expected)


def test_short_video_repeats_the_last_index():
    np.testing.assert_array_equal(sample_indices(1, 10.0, fps=2.0), [0, 0])
    np.testing.assert_array_equal(sample_indices(3, 10.0, num_frames=6), [0, 1, 2, 2, 2, 2])


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(1, 5000),
    source_fps=st.floats(1.0, 120.0),
    fps=st.floats(0.05, 30.0),
    num_frames=st.one_of(st.none(), st.integers(1, MAX_SAMPLED_FRAMES)),
    min_frames=st.integers(1, 32),
    extra=st.integers(0, 200),
    frames_per_chunk=st.sampled_from([1, 2, 4]),
)
def test_sample_indices_invariants(
    total, source_fps, fps, num_frames, min_frames, extra, frames_per_chunk
):
    max_frames = min_frames + extra
    indices = sample_indices(
        total,
        source_fps,
        fps=fps,
        num_frames=num_frames,
        min_frames=min_frames,
        max_frames=max_frames,
        frames_per_chunk=frames_per_chunk,
    )
    count = len(indices)
    assert count % frames_per_chunk == 0 and count >= frames_per_chunk
    assert np.all(np.diff(indices) >= 0) and indices[0] == 0 and indices[-1] <= total - 1
    if min(count, total) > 1:
        assert indices[-1] == total - 1  # the span is covered end to end
    if num_frames is None:
        assert count <= max(frames_per_chunk, max_frames)
        assert count <= max(frames_per_chunk, total)
    else:
        assert abs(count - num_frames) <= frames_per_chunk / 2 or count == frames_per_chunk


@pytest.mark.parametrize(
    "kwargs, shown",
    [
        (dict(fps=0.0), "0.0"),
        (dict(fps=-2.0), "-2.0"),
        (dict(fps=math.nan), "nan"),
        (dict(fps=1e9), "1000000000.0"),
        (dict(fps=None), "neither"),
        (dict(num_frames=0), "0"),
        (dict(num_frames=-4), "-4"),
        (dict(num_frames=2.5), "2.5"),
        (dict(num_frames=MAX_SAMPLED_FRAMES + 1), str(MAX_SAMPLED_FRAMES + 1)),
        (dict(min_frames=0), "0"),
        (dict(max_frames=10_000), "10000"),
        (dict(min_frames=9, max_frames=8), "9"),
    ],
)
def test_bad_sampling_values_raise_budget_error(media, kwargs, shown):
    args = dict(fps=2.0, num_frames=None, min_frames=4, max_frames=64) | kwargs
    with pytest.raises(BudgetError, match=shown):
        check_sampling(**args)
    with pytest.raises(BudgetError, match=shown):
        load_video(media["plain"], geometry=GEOMETRY, **args)


# ------------------------------------------------------------------------------ decoding
@pytest.mark.parametrize("backend", BACKENDS)
def test_decodes_the_requested_frames_at_base_size(media, backend):
    video = load_video(media["plain"], geometry=GEOMETRY, num_frames=8, backend=backend)
    expected = np.round(np.linspace(0, 29, 8)).astype(np.int64)
    np.testing.assert_array_equal(video.indices, expected)
    assert decoded_indices(video) == expected.tolist()
    assert video.frames.shape == (8, *GEOMETRY.base_size(96, 128), 3) == (8, 84, 140, 3)
    assert video.frames.dtype == np.uint8 and video.base_size == (84, 140)
    np.testing.assert_allclose(video.timestamps, expected / 10, atol=1e-4)
    assert video.timestamps.dtype == np.float64
    assert video.source_fps == pytest.approx(10.0) and video.total_frames == 30
    assert video.duration_s == pytest.approx(3.0, abs=1e-3)
    assert video.source_size == (96, 128) and video.backend == backend
    assert video.path == str(media["plain"])
    assert video.sample_fps == pytest.approx(7 / (video.timestamps[-1] - video.timestamps[0]))


def test_fps_sampling_on_a_real_file(media):
    video = load_video(media["plain"], geometry=GEOMETRY, fps=2.0)  # 3 s at 2 fps → 6 frames
    assert len(video.frames) == 6 and decoded_indices(video) == video.indices.tolist()


def test_backends_agree_on_pixels(media):
    a, *others = (
        load_video(media["plain"], geometry=GEOMETRY, num_frames=6, backend=n) for n in BACKENDS
    )
    for b in others:
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_allclose(a.timestamps, b.timestamps, atol=1e-4)
        assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 2.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate_timestamps_are_container_pts(media, backend):
    video = load_video(media["vfr"], geometry=GEOMETRY, num_frames=10, backend=backend)
    pts = vfr_pts(30, fps=10) * float(VFR_TIME_BASE)  # what the writer stamped, seconds
    assert decoded_indices(video) == video.indices.tolist()
    np.testing.assert_allclose(video.timestamps, pts[video.indices], atol=1e-4)
    span = pts[video.indices[-1]] - pts[video.indices[0]]
    assert video.sample_fps == pytest.approx(9 / span, rel=1e-4)
    assert video.sample_fps != pytest.approx(video.source_fps * 10 / 30)  # not a CFR guess


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rotate", [90, 180, 270])
def test_rotation_metadata_gives_upright_frames(tmp_path, backend, rotate):
    path = write_video(tmp_path / f"r{rotate}.mp4", num_frames=12, rotate=rotate)
    video = load_video(path, geometry=GEOMETRY, num_frames=4, backend=backend)
    assert video.source_size == (96, 128)  # displayed size; stored is 128x96 for 90 and 270
    assert video.frames.shape[1:3] == GEOMETRY.base_size(96, 128)
    assert decoded_indices(video) == video.indices.tolist()  # -1 if a frame were turned


@pytest.mark.parametrize("backend", BACKENDS)
def test_frames_shrink_and_grow_to_the_base_size(tmp_path, backend):
    small = write_video(tmp_path / "small.mp4", num_frames=8, height=48, width=64)
    big = Geometry(factor=28, min_pixels=4 * 28 * 28, max_pixels=200 * 280)
    tiny = Geometry(factor=28, min_pixels=2 * 28 * 28, max_pixels=2 * 28 * 28)
    for geometry in (big, tiny):
        video = load_video(small, geometry=geometry, num_frames=4, backend=backend)
        assert video.frames.shape[1:3] == geometry.base_size(48, 64)
    assert big.base_size(48, 64)[0] > 48 and tiny.base_size(48, 64)[0] < 48


def test_short_video_pads_with_its_last_frame(tmp_path):
    path = write_video(tmp_path / "three.mp4", num_frames=3)
    video = load_video(path, geometry=GEOMETRY, num_frames=6)
    assert video.indices.tolist() == [0, 1, 2, 2, 2, 2] == decoded_indices(video)
    assert len(video.frames) % GEOMETRY.frames_per_chunk == 0


def test_mpegts_with_b_frames_is_served_exactly_by_pyav(tmp_path, caplog, decord_first):
    path = write_video(tmp_path / "clip.ts", num_frames=30)
    with caplog.at_level(logging.INFO, logger="resadapt.video"):
        video = load_video(path, geometry=GEOMETRY, num_frames=6)
    assert video.backend == "pyav" and decoded_indices(video) == video.indices.tolist()
    assert any("mpegts" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_decord_decodes_in_small_groups(media, monkeypatch):
    sizes = []
    get_batch = decord.VideoReader.get_batch

    def spy(self, indices):
        sizes.append(len(indices))
        return get_batch(self, indices)

    monkeypatch.setattr(decord.VideoReader, "get_batch", spy)
    load_video(media["plain"], geometry=GEOMETRY, num_frames=10, backend="decord")
    assert sum(sizes) == 10 and max(sizes) <= DECODE_GROUP


# ------------------------------------------------------------------------------ fallback
def test_fallback_on_a_file_decord_cannot_read(tmp_path, caplog, decord_first):
    path = write_video(tmp_path / "av1.mp4", num_frames=10, codec="libsvtav1")
    with caplog.at_level(logging.INFO, logger="resadapt.video"):
        video = load_video(path, geometry=GEOMETRY, num_frames=4)
    assert video.backend == "pyav" and decoded_indices(video) == video.indices.tolist()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0] and "decord" in warnings[0]
    assert any(r.getMessage().startswith("pyav served") for r in caplog.records)
    with pytest.raises(VideoError, match="could not be opened by decord"):
        load_video(path, geometry=GEOMETRY, num_frames=4, backend="decord")  # forced: no fallback


@pytest.mark.parametrize("where", ["open", "decode"])
@pytest.mark.parametrize("error", [decord.DECORDError("boom from decord"), RuntimeError("boom")])
def test_fallback_on_decord_errors_is_logged(
    media, monkeypatch, caplog, where, error, decord_first
):
    def fail(*args, **kwargs):
        raise error

    target = "__init__" if where == "open" else "get_batch"
    monkeypatch.setattr(decoders.decord.VideoReader, target, fail)
    with caplog.at_level(logging.INFO, logger="resadapt.video"):
        video = load_video(media["plain"], geometry=GEOMETRY, num_frames=4)
    assert video.backend == "pyav" and decoded_indices(video) == video.indices.tolist()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(media["plain"]) in warnings[0] and "boom" in warnings[0]
    assert any(r.getMessage().startswith("pyav served") for r in caplog.records)


def test_fallback_is_narrow(media, monkeypatch, decord_first):
    def bug(*args, **kwargs):
        raise KeyError("a bug, not a decoder error")

    monkeypatch.setattr(decoders.decord.VideoReader, "get_batch", bug)
    with pytest.raises(KeyError):
        load_video(media["plain"], geometry=GEOMETRY, num_frames=4)


def test_the_first_backend_of_the_order_is_the_default_and_logged(media, caplog):
    with caplog.at_level(logging.INFO, logger="resadapt.video"):
        video = load_video(media["plain"], geometry=GEOMETRY, num_frames=4)
    assert video.backend == video_module.BACKEND_ORDER[0]
    assert any(r.getMessage().startswith(f"{video.backend} served") for r in caplog.records)


def test_unknown_backend(media):
    with pytest.raises(ResAdaptError, match="'ffmpeg-cli'"):
        load_video(media["plain"], geometry=GEOMETRY, backend="ffmpeg-cli")


# ------------------------------------------------------------------------------ bad input
BAD_FILES = {
    "text": "could not be opened as a video",
    "truncated": "could not be opened as a video",
    "truncated_faststart": "truncated",
    "zeroed": "no decodable video frames",
    "audio": r"no video stream \(it holds: audio\)",
    "dir": "is a directory",
    "empty": "is empty",
}


@pytest.mark.parametrize("backend", [None, *BACKENDS])
@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_raise_one_video_error(media, name, backend):
    with pytest.raises(VideoError, match=BAD_FILES[name]) as caught:
        load_video(media[name], geometry=GEOMETRY, backend=backend)
    message = str(caught.value)
    assert str(media[name]) in message and "\n" not in message


@pytest.mark.parametrize(
    "path, shown",
    [
        ("https://example.com/clip.mp4", "only local files are accepted"),
        ("file:///tmp/clip.mp4", "only local files are accepted"),
        ("/no/such/clip.mp4", "does not exist"),
    ],
)
def test_bad_paths_raise_video_error(path, shown):
    with pytest.raises(VideoError, match=shown) as caught:
        load_video(path, geometry=GEOMETRY)
    assert path in str(caught.value)


def test_limits_reject_huge_sources(media, monkeypatch):
    monkeypatch.setattr(decoders, "MAX_SOURCE_PIXELS", 64 * 64)
    for backend in BACKENDS:
        with pytest.raises(VideoError, match="128x96"):
            load_video(media["plain"], geometry=GEOMETRY, backend=backend)
    monkeypatch.undo()
    monkeypatch.setattr(decoders, "MAX_DURATION_S", 1.0)
    for backend in BACKENDS:
        with pytest.raises(VideoError, match=r"is 4\.0 s long; the longest accepted is 1\.0 s"):
            load_video(media["vfr"], geometry=GEOMETRY, backend=backend)


# ------------------------------------------------------------------------------ resizing
def test_resize_frames_and_thumbnails():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 84, 140, 3), dtype=np.uint8)  # (T, H, W, 3)
    assert resize_frames(frames, (84, 140)) is frames
    for size in [(56, 84), (112, 196)]:
        out = resize_frames(frames, size)
        assert out.shape == (4, *size, 3) and out.dtype == np.uint8
    flat = np.full((2, 84, 140, 3), 77, np.uint8)
    assert np.all(resize_frames(flat, (168, 280)) == 77) and np.all(
        resize_frames(flat, (28, 28)) == 77
    )
    thumbs = thumbnails(frames)
    assert thumbs.shape == (4, 64, 64, 3) and thumbs.dtype == np.uint8
    assert thumbnails(frames, side=16).shape == (4, 16, 16, 3)
