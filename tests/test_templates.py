"""The checkpoints' own chat templates (video before the question; Qwen2.5-VL's system turn) on the
tiny random backbones: chunked == native, token accounting, and the attention probe's queries."""

import numpy as np
import pytest
import torch

from resadapt.backbone import Backbone
from resadapt.config import Request
from resadapt.pipeline import Pipeline
from resadapt.relevance import chunk_attention, query_rows
from resadapt.world import TINY_BACKBONES
from tests.media import write_video
from tests.templates import with_real_template
from tests.test_backbone import QUESTION, chunked, clip
from tests.test_backbone import test_chunked_equals_native_at_uniform_scale as chunked_equals_native
from tests.test_backbone import (
    test_predicted_tokens_equal_processor_tokens as chunk_tokens_equal_geometry,
)


@pytest.fixture(scope="module", params=TINY_BACKBONES)
def backbone(request):
    return with_real_template(Backbone.load(request.param))


def test_the_video_comes_before_the_question(backbone):
    prompt = backbone.prompt(QUESTION)
    video = prompt.index(backbone.processor.video_token)
    assert video < prompt.index(QUESTION) < prompt.index("<|im_start|>assistant")
    has_system = prompt.startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert has_system == (backbone.family == "qwen2_5_vl")


def test_chunked_equals_native_at_uniform_scale(backbone):
    chunked_equals_native(backbone)


def test_chunk_tokens_equal_the_geometry(backbone):
    chunk_tokens_equal_geometry(backbone)


def test_after_video_queries_are_the_question_and_the_cue(backbone):
    """The probe's query positions are found in the token layout: here the question follows the
    video, so the queries hold every question token; the answer position is the last token."""
    frames, timestamps, _ = clip(backbone)
    inputs = backbone.prepare([chunked(frames, timestamps)], [QUESTION])
    ids = inputs["input_ids"].cpu()
    is_video = ids == backbone.model.config.video_token_id
    rows = query_rows(is_video, inputs["attention_mask"].bool().cpu(), "after_video")  # (1, Q)
    tail = backbone.tokenizer.decode(ids[0, -rows.shape[1] :][rows[0]])
    assert tail.startswith("<|vision_end|>") and QUESTION in tail
    assert tail.endswith("<|im_start|>assistant\n")
    assert query_rows(is_video, inputs["attention_mask"].bool().cpu(), "last").shape == (1, 1)


def test_attention_shares_depend_on_the_question(backbone):
    frames, timestamps, _ = clip(backbone, seed=4)
    video = chunked(frames, timestamps)
    a, b = chunk_attention(
        backbone,
        [video, video],
        [QUESTION, "Which digit is on the red card in the first seconds?"],
        queries="after_video",
    )
    for shares in (a, b):
        torch.testing.assert_close(shares.sum(), torch.tensor(1.0))
    assert not torch.allclose(a, b, atol=1e-4)


def test_attention_policy_end_to_end(backbone, tmp_path):
    path = str(write_video(tmp_path / "clip.mp4", num_frames=24, fps=8, height=168, width=224))
    pipeline = Pipeline(backbone)
    assert pipeline.default_policy == "attention"
    request = Request(question=QUESTION, num_frames=8, budget=0.5, max_new_tokens=2)
    result = pipeline.ask(path, request).to_json()
    assert result["policy"] == "attention" and result["probe_visual_tokens"] > 0
    assert result["visual_tokens"] <= 0.5 * result["vanilla_visual_tokens"]
    scales = np.array([c["scale"] for c in result["chunks"]])
    assert scales.max() > scales.min()  # the probe ranked the chunks
