"""The decoder registry's order, timeout and fallbacks: the measured order, a hung backend bounded.

Real H.264 files from tests.media; a test backend registered for one test sleeps in its decode
until the test ends, so the timeout, not the backend, returns control.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from resadapt import decoders
from resadapt import video as video_module
from resadapt.decoders import PyAVSource
from resadapt.errors import VideoError
from resadapt.geometry import Geometry
from resadapt.video import load_video
from tests.media import frame_index, write_video

GEOMETRY = Geometry(factor=28, min_pixels=4 * 28 * 28, max_pixels=128 * 96)
TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("dec") / "clip.mp4", num_frames=20, fps=10)


@pytest.fixture
def torchcodec_first(monkeypatch):
    """torchcodec → decord → PyAV: the fallbacks out of torchcodec (PyAV is first by default)."""
    monkeypatch.setattr(video_module, "BACKEND_ORDER", ("torchcodec", "decord", "pyav"))


@pytest.fixture
def sleepy(monkeypatch):
    """Register ``sleepy``: opens like PyAV, then hangs in read() until the test is over."""
    release = threading.Event()

    class SleepySource(PyAVSource):
        name = "sleepy"

        def read(self, indices):
            release.wait(60)  # a decoder stuck without an error
            yield from super().read(indices)

    monkeypatch.setitem(video_module.VIDEO_BACKENDS, "sleepy", SleepySource)
    yield
    release.set()


def test_the_measured_order_and_torchcodec_registered(clip, caplog):
    assert video_module.BACKEND_ORDER == ("pyav", "torchcodec", "decord")
    assert set(video_module.BACKEND_ORDER) <= set(video_module.VIDEO_BACKENDS)
    with caplog.at_level(logging.INFO, logger="resadapt.video"):
        video = load_video(clip, geometry=GEOMETRY, num_frames=6)
    assert video.backend == "pyav" and not caplog.records[:-1]  # one line: who served
    forced = load_video(clip, geometry=GEOMETRY, num_frames=6, backend="torchcodec")
    assert [frame_index(f) for f in forced.frames] == forced.indices.tolist()
    np.testing.assert_allclose(forced.timestamps, forced.indices / 10.0, atol=1e-6)


def test_a_hanging_backend_gives_way_to_the_next_within_the_timeout(
    clip, sleepy, monkeypatch, caplog
):
    monkeypatch.setattr(video_module, "BACKEND_ORDER", ("sleepy", "pyav"))
    monkeypatch.setattr(video_module, "DECODE_TIMEOUT_S", TIMEOUT_S)
    start = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="resadapt.video"):
        video = load_video(clip, geometry=GEOMETRY, num_frames=4)
    assert time.perf_counter() - start < TIMEOUT_S + 5.0
    assert video.backend == "pyav" and [frame_index(f) for f in video.frames] == [0, 6, 13, 19]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "sleepy did not finish decoding" in warning and "trying pyav" in warning


def test_a_forced_hanging_backend_is_one_video_error(clip, sleepy):
    with pytest.raises(VideoError, match=r"sleepy did not finish decoding .* within 0\.5 s"):
        load_video(clip, geometry=GEOMETRY, num_frames=4, backend="sleepy", timeout_s=TIMEOUT_S)


def test_torchcodec_errors_fall_back_to_decord(clip, monkeypatch, caplog, torchcodec_first):
    def fail(self, indices):
        raise RuntimeError("boom from torchcodec")

    monkeypatch.setattr(decoders.TorchCodecDecoder, "get_frames_at", fail)
    with caplog.at_level(logging.INFO, logger="resadapt.video"):
        video = load_video(clip, geometry=GEOMETRY, num_frames=4)
    assert video.backend == "decord"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "boom from torchcodec" in warning and "trying decord" in warning


def test_torchcodec_fallback_is_narrow(clip, monkeypatch, torchcodec_first):
    def bug(self, indices):
        raise KeyError("a bug, not a decoder error")

    monkeypatch.setattr(decoders.TorchCodecDecoder, "get_frames_at", bug)
    with pytest.raises(KeyError):
        load_video(clip, geometry=GEOMETRY, num_frames=4)


def test_mpegts_skips_torchcodec_and_decord(tmp_path, caplog, torchcodec_first):
    path = write_video(tmp_path / "clip.ts", num_frames=20)
    with caplog.at_level(logging.INFO, logger="resadapt.video"):
        video = load_video(path, geometry=GEOMETRY, num_frames=6)
    assert (
        video.backend == "pyav" and [frame_index(f) for f in video.frames] == video.indices.tolist()
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w.split()[0] for w in warnings] == ["torchcodec", "decord"]
