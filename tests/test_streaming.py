"""Streaming that cannot hang: a generation that fails mid-answer, one that goes silent, and a
request that goes away (a real tiny Qwen2.5-VL whose forward is made to fail or stall by a hook)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import resadapt.world  # noqa: F401 (registers the tiny backbones)
from resadapt import ui
from resadapt.backbone import GENERATION_THREAD, Backbone, ChunkedVideo
from resadapt.errors import BackboneError
from resadapt.pipeline import Pipeline
from tests.media import write_video


@pytest.fixture(scope="module")
def backbone():
    bb = Backbone.load("tiny-random-qwen2.5-vl")
    # An answer that never ends by itself: the end-of-turn ids cannot be generated.
    bb.model.generation_config.suppress_tokens = [bb.tokenizer.eos_token_id]
    return bb


@pytest.fixture
def inputs(backbone):
    frames = np.random.default_rng(0).integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
    video = ChunkedVideo([frames[:2], frames[2:]], np.arange(4.0).reshape(2, 2) / 2, 2.0)
    return backbone.prepare([video], ["What happens?"])


def _generating() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == GENERATION_THREAD and t.is_alive()]


class FailAfter:
    """A forward hook that raises from the N-th forward on (a crash mid-answer, e.g. an OOM)."""

    def __init__(self, calls: int):
        self.calls, self.seen = calls, 0

    def __call__(self, module, args, output):
        self.seen += 1
        if self.seen > self.calls:
            raise RuntimeError("CUDA out of memory (simulated)")


def test_a_failure_mid_answer_reaches_the_caller(backbone, inputs):
    handle = backbone.model.register_forward_hook(FailAfter(3))
    try:
        with pytest.raises(BackboneError, match="RuntimeError: CUDA out of memory"):
            for _ in backbone.stream(inputs, 50):
                pass
    finally:
        handle.remove()
    assert not _generating()


def test_a_silent_generation_ends_with_an_error(backbone, inputs):
    handle = backbone.model.register_forward_hook(lambda *_: time.sleep(0.5))
    try:
        with pytest.raises(BackboneError, match="produced nothing for 0.2 s"):
            list(backbone.stream(inputs, 50, timeout_s=0.2))
    finally:
        handle.remove()
    assert not _generating()


def test_closing_the_stream_stops_generation(backbone, inputs):
    forwards = []
    handle = backbone.model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        stream = backbone.stream(inputs, 1000)
        next(stream)
        start = time.perf_counter()
        stream.close()  # what gradio does when the client goes or the stop button is pressed
        assert time.perf_counter() - start < 5.0
        assert not _generating()
        assert len(forwards) < 1000
    finally:
        handle.remove()


def test_the_app_reports_a_failure_and_serves_the_next_request(backbone, tmp_path):
    path = write_video(tmp_path / "clip.mp4", num_frames=8, height=56, width=56)
    pipeline = Pipeline(backbone)
    form = ui.Form("What happens?", "uniform", budget=None, num_frames=4, max_new_tokens=8)
    handle = backbone.model.register_forward_hook(FailAfter(2))
    try:
        with pytest.raises(BackboneError):
            list(ui.answer_views(pipeline, str(path), form))
    finally:
        handle.remove()
    assert ui.answer_json(pipeline, str(path), form)["answer"] is not None
