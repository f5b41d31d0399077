"""ZeroGPU readiness: the real ``spaces`` package (ZeroGPU off) around the app's callbacks, the
duration sized from each request and its bounds, and a Space's import-time load and lazy
examples."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import app
from resadapt import ui, zerogpu
from resadapt.assets import examples
from resadapt.backbone import Backbone
from resadapt.pipeline import Pipeline
from resadapt.video import MAX_SAMPLED_FRAMES

spaces = pytest.importorskip("spaces")  # requirements-dev.txt installs it

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    pipeline = Pipeline(Backbone.load("tiny-random-qwen2.5-vl"))
    app.build_demo(pipeline)  # sets the callbacks' pipeline and chat
    return pipeline


def test_the_real_spaces_package_wraps_the_callbacks_with_zerogpu_off(pipeline):
    from spaces.config import Config

    assert app.spaces is spaces and not Config.zero_gpu
    marker = object()

    def task():
        return marker

    # off ZeroGPU, spaces.GPU(duration=callable) hands the function back: it runs as written
    assert spaces.GPU(duration=app.answer_seconds)(task) is task
    assert app.gpu(task) is task and app.gpu(duration=app.chat_seconds)(task) is task


def test_the_decorated_callbacks_run_and_their_durations_take_the_same_arguments(pipeline):
    video, question = ui.example_rows()[1]
    settings = ("uniform", 0.5, 0, 4, 2.0, 3)  # policy, budget, cap, frames, fps, new tokens
    result = app.answer(video, question, *settings)
    assert result["policy"] == "uniform" and result["answer"] is not None
    assert 0 < app.answer_seconds(video, question, *settings) <= zerogpu.MAX_GPU_SECONDS
    history, turn = app.chat(video, question, [], *settings)
    history, turn = app.chat(video, "Which digit is on the red card?", history, *settings)
    assert len(history) == 6 and turn["visual_tokens"] <= 0.5 * turn["vanilla_visual_tokens"]
    assert app.chat_seconds(video, question, history, *settings) == app.answer_seconds(
        video, question, *settings
    )
    views = list(app.chat_live(video, question, [], *settings, ui.OWN_OPERATOR, 0, []))
    assert views[-1][2] and len(views[-1][0]) == 3
    comparison = app.compare(video, question, *settings)
    assert len(comparison["results"]) >= 3
    longer = ("uniform", 0.5, 0, 0, 2.0, 256)  # every frame at 2 fps, long answers
    assert app.compare_seconds(video, question, *longer) > app.answer_seconds(
        video, question, *longer
    )
    assert app.answer_example(video, question)[-1]["visual_tokens"] > 0
    # every duration function accepts the call its callback gets
    for fn, seconds in [
        (app.answer, app.answer_seconds),
        (app.answer_live, app.answer_seconds),
        (app.compare, app.compare_seconds),
        (app.chat, app.chat_seconds),
        (app.chat_live, app.chat_seconds),
        (app.answer_example, app.answer_seconds),
    ]:
        params = list(inspect.signature(fn).parameters)
        args = {"video": video, "question": question, "history": [], "results": []}
        call = [args.get(p, 0) for p in params if p != "progress"]
        assert zerogpu.MIN_GPU_SECONDS <= seconds(*call) <= zerogpu.MAX_GPU_SECONDS, fn.__name__


def test_duration_bounds_and_what_it_grows_with():
    low = zerogpu.gpu_seconds(1, 0.01, 1, "uniform")
    high = zerogpu.gpu_seconds(MAX_SAMPLED_FRAMES, 1.0, 1024, "attention", runs=5)
    assert low == zerogpu.MIN_GPU_SECONDS and high == zerogpu.MAX_GPU_SECONDS
    base = dict(frames=400, retention=0.15, max_new_tokens=64, policy="uniform")
    at = zerogpu.gpu_seconds(**base)
    assert zerogpu.MIN_GPU_SECONDS < at < zerogpu.MAX_GPU_SECONDS
    assert zerogpu.gpu_seconds(**{**base, "frames": 600}) > at
    assert zerogpu.gpu_seconds(**{**base, "retention": 0.6}) > at
    assert zerogpu.gpu_seconds(**{**base, "retention": None}) > at  # no cap: full resolution
    assert zerogpu.gpu_seconds(**{**base, "max_new_tokens": 256}) > at
    assert zerogpu.gpu_seconds(**{**base, "policy": "attention"}) > at  # its probe pass
    assert zerogpu.gpu_seconds(**{**base, "policy": "prune"}) >= zerogpu.gpu_seconds(
        **{**base, "retention": 1.0}
    )  # the tower encodes every frame at full resolution
    assert zerogpu.gpu_seconds(**base, runs=3) > at
    for frames in (0, 1, 10_000):
        for tokens in (None, 0, 1, 10_000):
            seconds = zerogpu.gpu_seconds(frames, 1.0, tokens, "attention", runs=9)
            assert zerogpu.MIN_GPU_SECONDS <= seconds <= zerogpu.MAX_GPU_SECONDS
            assert isinstance(seconds, int)


def test_sampled_frames_from_the_request(tmp_path):
    video = examples()[0]["video"]
    assert zerogpu.sampled_frames(video, 6, 2.0) == 6
    assert zerogpu.sampled_frames(video, 0, 2.0) == 16  # 8 s at 2 fps, from the header
    assert zerogpu.sampled_frames(video, None, 0.5) == 4
    assert zerogpu.sampled_frames(video, 10**6, 2.0) == MAX_SAMPLED_FRAMES
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    assert zerogpu.sampled_frames(str(bad), 0, 2.0) == MAX_SAMPLED_FRAMES  # sized, never raised
    assert zerogpu.sampled_frames(None, 0, 2.0) == MAX_SAMPLED_FRAMES


SPACE_SCRIPT = """
import os
import gradio as gr
import app

assert app.ON_SPACE and app.CACHE_EXAMPLES == "lazy"
assert app.SPACE_PIPELINE is not None and app.SPACE_PIPELINE.learned is not None  # at import
made = []
examples = gr.Examples
gr.Examples = lambda *a, **k: made.append(examples(*a, **k)) or made[-1]
app.build_demo(app.SPACE_PIPELINE)
cache = os.environ["GRADIO_EXAMPLES_CACHE"]
assert made[0].cache_examples == "lazy" and not os.listdir(cache)  # nothing ran at start-up
answer, *_, result = made[0].load_from_cache(1)  # the first click runs the example once
assert answer == result["answer"] and result["policy"] == "learned" and os.listdir(cache)
assert made[0].load_from_cache(1)[0] == answer  # later clicks read the cache
print("lazy ok")
"""


def test_on_a_space_the_models_load_at_import_and_examples_cache_lazily(tmp_path):
    env = {**os.environ, "SPACE_ID": "test/resadapt", "GRADIO_EXAMPLES_CACHE": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-c", SPACE_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "lazy ok" in run.stdout


def test_requirements_dev_installs_spaces_and_the_front_matter_suggests_zerogpu():
    assert "spaces" in (ROOT / "requirements-dev.txt").read_text()
    front = (ROOT / "README.md").read_text().split("---\n")[1]
    assert "suggested_hardware: zero-a10g" in front.splitlines()
