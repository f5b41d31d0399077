"""Bad input at scale, one sentence each: more chunks than the allocator reads, a video longer
than the app accepts (refused from its header, before sampling), an 8K upload, a question longer
than the allocator's query window; the evaluator counts such rows by reason and finishes."""

from __future__ import annotations

import numpy as np
import pytest

import resadapt.world  # noqa: F401 (registers the tiny backbones)
from resadapt import eval as evaluator
from resadapt import eval_config, report, ui
from resadapt.backbone import Backbone
from resadapt.config import Request
from resadapt.data import Example, load_examples
from resadapt.errors import ChunkLimitError, VideoError
from resadapt.pipeline import Pipeline
from resadapt.policies import AllocationContext, Learned, allocator_inputs, query_window
from resadapt.video import container_duration
from resadapt.world import synth
from resadapt.world.tiny import build_tokenizer
from tests.allocators import write_tiny_allocator
from tests.media import write_video

MAX_CHUNKS = 2


@pytest.fixture(scope="module")
def backbone():
    return Backbone.load("tiny-random-qwen2.5-vl")


@pytest.fixture(scope="module")
def allocator_dir(tmp_path_factory, backbone):
    path = tmp_path_factory.mktemp("allocator")
    return write_tiny_allocator(path, backbone, max_chunks=MAX_CHUNKS)


def test_more_chunks_than_the_allocator_reads_is_one_sentence(backbone, allocator_dir, tmp_path):
    learned = Learned.load(allocator_dir, backbone.tokenizer)
    pipeline = Pipeline(backbone, learned)
    path = write_video(tmp_path / "clip.mp4", num_frames=12, height=56, width=56)
    request = Request("What happens?", num_frames=8)
    with pytest.raises(ChunkLimitError) as caught:
        pipeline.allocate(pipeline.decode(str(path), request), request)
    message = str(caught.value)
    assert "4 chunks (8 frames)" in message and f"at most {MAX_CHUNKS}" in message
    assert "--frames or --fps" in message and "\n" not in message


def test_the_evaluator_counts_rows_by_reason_and_finishes(allocator_dir, tmp_path):
    rows = synth.write_dataset(tmp_path, 2, seed=0, task="main", size=112)
    config = evaluator.EvalConfig(
        data=str(rows),
        out=str(tmp_path / "out"),
        backbone="tiny-random-qwen2.5-vl",
        policies=eval_config.parse_policies(f"uniform,learned:{allocator_dir}"),
        budgets=(None,),
        frames=(4, 8),
        max_new_tokens=4,
    )
    pipeline, learned, _ = evaluator.load(config)
    summary = report.Summary(config)
    for record in evaluator.Evaluator(config, pipeline, learned).run(load_examples(rows)[0]):
        summary.add(record)
    by_cell = {(r["policy"], r["frames"]): r for r in summary.rows()}
    too_many = by_cell[("learned", 8)]
    assert too_many["too_many_chunks"] == 2 and too_many["examples"] == 0
    assert by_cell[("learned", 4)]["examples"] == 2 and by_cell[("uniform", 8)]["examples"] == 2
    assert "too_many_chunks" in report.ROW_COLUMNS and "rejected" in report.ROW_COLUMNS


def test_a_long_video_is_refused_from_its_header_before_sampling(backbone, tmp_path, monkeypatch):
    path = write_video(tmp_path / "long.mp4", num_frames=40, fps=10, height=56, width=56)
    assert container_duration(path) == pytest.approx(4.0, abs=0.2)
    monkeypatch.setattr(ui, "MAX_DURATION_S", 3.0)
    pipeline = Pipeline(backbone)

    def never(*args, **kwargs):
        raise AssertionError("sampled a video the header already refuses")

    monkeypatch.setattr(pipeline, "decode", never)
    with pytest.raises(VideoError, match=r"long\.mp4 is 0\.1 min long; the app accepts videos up"):
        ui.decode(pipeline, str(path), Request("What happens?"))


def test_an_8k_upload_is_downscaled_at_decode(backbone, tmp_path):
    path = write_video(tmp_path / "8k.mp4", num_frames=2, fps=2, height=4320, width=7680)
    assert path.stat().st_size < 2_000_000
    video = ui.decode(Pipeline(backbone), str(path), Request("What happens?", num_frames=2))
    h, w = video.base_size
    assert video.source_size == (4320, 7680) and video.frames.shape == (2, h, w, 3)
    assert h * w <= backbone.geometry.max_pixels


def test_a_long_question_keeps_its_options_in_the_query_window():
    tokenizer = build_tokenizer()
    stem = "When does the blue card appear and which digit is on the red card? " * 4
    options = ["horizontal stripes", "vertical stripes", "diagonal", "anti-diagonal", "purple"]
    example = Example("v.mp4", stem, options[4], "multiple_choice", options=options)
    question = example.prompt()
    ids = tokenizer(question)["input_ids"]
    window = 64
    assert len(ids) > window
    ctx = AllocationContext(
        thumbs=np.zeros((2, 32, 32, 3), np.uint8),
        timestamps=np.arange(2.0),
        question=question,
    )
    query = allocator_inputs([ctx], tokenizer, window)["query_ids"][0].tolist()
    text = tokenizer.decode(query)
    for letter, option in zip("ABCDE", options, strict=True):
        assert f"{letter}. {option}" in text, (letter, text)
    assert query[: window // 4] == ids[: window // 4]  # the stem's opening is kept too
    assert query_window(ids[:10], window) == ids[:10]


def test_a_cut_question_is_reported_not_silent():
    """The allocator reads the head and tail of a long question; the context, and so the result
    and the log, say how much it read."""
    tokenizer = build_tokenizer()
    question = "Which card shows vertical stripes after the blue one appears? " * 8
    n = len(tokenizer(question)["input_ids"])
    ctx = AllocationContext(
        thumbs=np.zeros((2, 32, 32, 3), np.uint8), timestamps=np.arange(2.0), question=question
    )
    allocator_inputs([ctx], tokenizer, 64)
    assert ctx.notes == [
        f"the allocator read 64 of the question's {n} tokens: the first 16 and the last 48"
    ]
    short = AllocationContext(
        thumbs=np.zeros((2, 32, 32, 3), np.uint8), timestamps=np.arange(2.0), question="Which?"
    )
    allocator_inputs([short], tokenizer, 64)
    assert short.notes == []
