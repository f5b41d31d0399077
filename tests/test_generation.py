"""Generation settings on purpose: greedy answers ignore the checkpoint's sampling knobs, the
checkpoint's end-of-turn ids are kept, rollouts sample with their own temperature / top-p / top-k
(tiny random Qwen2.5-VL with a Qwen-like near-greedy generation_config)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import resadapt.world  # noqa: F401 (registers the tiny backbones)
from resadapt.backbone import Backbone, ChunkedVideo
from resadapt.train import parse_config


@pytest.fixture(scope="module")
def backbone():
    bb = Backbone.load("tiny-random-qwen2.5-vl")
    bb.model.generation_config.update(do_sample=True, top_k=1, top_p=0.001, temperature=0.7)
    return bb


def _inputs(backbone, rows: int):
    frames = np.random.default_rng(0).integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
    video = ChunkedVideo([frames[:2], frames[2:]], np.arange(4.0).reshape(2, 2) / 2, 2.0)
    return backbone.prepare([video] * rows, ["What happens?"] * rows)


def test_greedy_neutralises_the_checkpoints_sampling(backbone):
    config = backbone.generation_config(8)
    assert not config.do_sample and config.max_new_tokens == 8
    assert (config.temperature, config.top_p, config.top_k) == (1.0, 1.0, 50)  # library defaults
    inputs = _inputs(backbone, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = backbone.generate(inputs, 8)
    assert first == backbone.generate(inputs, 8)  # greedy despite the checkpoint's do_sample


def test_end_of_turn_ids_come_from_the_checkpoint(backbone):
    saved = backbone.model.generation_config.eos_token_id
    try:
        backbone.model.generation_config.eos_token_id = [5, 7]
        assert backbone.generation_config(4).eos_token_id == [5, 7]
        backbone.model.generation_config.eos_token_id = None
        assert backbone.generation_config(4).eos_token_id == [backbone.tokenizer.eos_token_id]
    finally:
        backbone.model.generation_config.eos_token_id = saved


def test_sampled_answers_differ_despite_a_near_greedy_checkpoint(backbone):
    config = backbone.generation_config(8, temperature=1.0, top_p=1.0, top_k=0)
    assert config.do_sample and (config.temperature, config.top_p, config.top_k) == (1.0, 1.0, 0)
    answers = backbone.generate(_inputs(backbone, 4), 8, temperature=1.0, seed=3)
    assert len(set(answers)) > 1, answers
    again = backbone.generate(_inputs(backbone, 4), 8, temperature=1.0, seed=3)
    assert again == answers  # seeded


def test_trainer_sampling_flags_are_recorded(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("")
    config = parse_config(["--data", str(data), "--top-p", "0.9", "--top-k", "20", "--cpu"])
    assert (config.top_p, config.top_k, config.temperature) == (0.9, 20, 1.0)
    from dataclasses import asdict

    saved = asdict(config)
    assert saved["top_p"] == 0.9 and saved["top_k"] == 20 and saved["dtype"] == "auto"
    assert saved["attn_implementation"] == "sdpa" and saved["cpu"] is True
