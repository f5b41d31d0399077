"""The attention policy: the probe's query rows and truncation, the share → scale map, and the
policy wherever one can be named (pipeline, ask CLI, eval, app views) on both tiny families."""

import csv
import json

import numpy as np
import pytest
import torch

from resadapt import ask, cli, compat, ui
from resadapt import eval as evaluator
from resadapt.config import Request
from resadapt.errors import BudgetError, PolicyError
from resadapt.pipeline import Pipeline
from resadapt.policies import (
    MIN_SCALE,
    POLICY_NAMES,
    AllocationContext,
    attention_scales,
    make_policy,
)
from resadapt.relevance import query_rows, recording, stop_after, text_layers
from resadapt.world import synth
from tests.test_backbone import QUESTION, chunked, clip
from tests.test_relevance import two_videos


# ---------------------------------------------------------------------------------------- map
def test_scales_follow_the_documented_map():
    shares = np.array([0.1, 0.4, 0.2, 0.3])
    # ratio to the top share: 0.25, 1, 0.5, 0.75; to the 4th power: 0.0039, 1, 0.0625, 0.3164
    expected = [MIN_SCALE, 1.0, MIN_SCALE, 0.75**4]
    assert attention_scales(shares) == pytest.approx(expected)
    assert attention_scales(np.full(3, 1 / 3)) == pytest.approx([1.0] * 3)


def test_query_rows_come_from_the_token_layout():
    # row 0: pad, pad, text, video, video, text, text; row 1: text, video, then 5 text tokens
    is_video = torch.tensor([[0, 0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0, 0]]).bool()
    real = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]]).bool()
    rows = query_rows(is_video, real, "after_video")  # (2, 5): 2 and 5 positions after the video
    assert rows.int().tolist() == [[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]]
    assert query_rows(is_video, real, "last").tolist() == [[True], [True]]


# ---------------------------------------------------------------------------------------- probe
def _eager_attentions(model, inputs):
    kernel = model.config.text_config._attn_implementation
    model.set_attn_implementation({"text_config": "eager"})
    try:
        return model(**inputs, output_attentions=True).attentions
    finally:
        model.set_attn_implementation({"text_config": kernel})


@pytest.mark.parametrize("padded", [True, False])
def test_query_rows_equal_eager_attention(backbone, padded):
    """Several query rows per layer, with padding (SDPA's mask) and without (the causal skip)."""
    videos = two_videos(backbone)
    questions = [QUESTION, "Which digit is on the green card?"]
    if not padded:
        videos, questions = videos[1:], questions[1:]
    inputs = backbone.prepare(videos, questions)
    q = 6
    with torch.no_grad():
        with recording(backbone.model, q) as rows:
            backbone.model(**inputs)
        eager = _eager_attentions(backbone.model, inputs)
    for row, full in zip(rows, eager, strict=True):
        assert row.shape[2] == q
        torch.testing.assert_close(row, full[:, :, -q:].float(), rtol=1e-4, atol=1e-5)


def test_truncated_probe_records_the_first_layers_and_leaves_no_hook(backbone):
    frames, timestamps, _ = clip(backbone)
    inputs = backbone.prepare([chunked(frames, timestamps)], [QUESTION])
    model = backbone.model

    def hooks() -> list[int]:
        return [len(layer._forward_hooks) for layer in text_layers(model)]

    before = hooks()
    with torch.no_grad():
        with recording(model) as full:
            model(**inputs)
        with recording(model) as first, stop_after(model, 1):
            model(**inputs)
    assert len(first) == 1 and len(full) == len(text_layers(model))
    torch.testing.assert_close(first[0], full[0])
    assert hooks() == before
    with pytest.raises(RuntimeError, match="boom"), stop_after(model, 1):
        raise RuntimeError("boom")  # other errors pass through, and the hook still goes
    assert hooks() == before


# ---------------------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize("layers", [None, 1])
def test_pipeline_reports_the_probe_cost(backbone, video, layers):
    pipeline = Pipeline(backbone)
    request = Request(
        question=QUESTION, policy="attention", num_frames=8, budget=0.4, probe_layers=layers
    )
    result = pipeline.ask(video, request).to_json()
    vanilla = result["vanilla_visual_tokens"]
    k = len(result["chunks"])
    assert result["probe_visual_tokens"] % k == 0  # every chunk at one size
    assert 0 < result["probe_visual_tokens"] <= max(k, 0.1 * vanilla)
    assert result["visual_tokens"] <= 0.4 * vanilla
    timings = result["timings"]
    assert 0 < timings["probe_s"] <= timings["allocate_s"] <= timings["total_s"]
    assert min(c["scale"] for c in result["chunks"]) >= MIN_SCALE - 1e-9


def test_other_policies_report_no_probe(backbone, video):
    pipeline = Pipeline(backbone)
    result = pipeline.ask(video, Request(question=QUESTION, policy="uniform", num_frames=4))
    assert result.probe_visual_tokens == 0 and result.timings["probe_s"] == 0.0


def test_attention_needs_the_video_and_the_backbone():
    ctx = AllocationContext(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4.0), "q?")
    with pytest.raises(PolicyError, match="attention policy needs"):
        make_policy("attention").scales(ctx)


def test_probe_requests_are_checked():
    with pytest.raises(BudgetError, match="probe budget"):
        Request(question=QUESTION, probe_budget=0)
    with pytest.raises(BudgetError, match="probe layers"):
        Request(question=QUESTION, probe_layers=0)


def test_ask_cli_runs_attention(video, capsys):
    argv = [video, QUESTION, "--backbone", "tiny-random-qwen3-vl", "--policy", "attention"]
    assert ask.main([*argv, "--probe-layers", "1", "--frames", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["policy"] == "attention" and result["probe_visual_tokens"] > 0
    assert ask.main([*argv, "--probe-budget", "2"]) == 2
    assert "probe budget" in capsys.readouterr().err


def test_eval_reports_the_probe_next_to_retention(tmp_path):
    rows_path = synth.write_dataset(tmp_path / "data", 1, seed=0, task="main", size=112)
    argv = [
        "--data", str(rows_path), "--backbone", "tiny-random-qwen2.5-vl",
        "--policies", "uniform,attention", "--budgets", "0.5", "--frames", "4",
        "--max-new-tokens", "1", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert evaluator.main(argv) == 0
    with (tmp_path / "out" / "results.csv").open() as f:
        rows = {r["policy"]: r for r in csv.DictReader(f)}
    assert float(rows["uniform"]["mean_probe_visual_tokens"]) == 0
    assert rows["uniform"]["mean_retention_with_probe"] == rows["uniform"]["mean_retention"]
    attention = rows["attention"]
    assert float(attention["mean_probe_visual_tokens"]) > 0
    assert float(attention["mean_retention_with_probe"]) > float(attention["mean_retention"])
    record = json.loads((tmp_path / "out" / "records.jsonl").read_text().splitlines()[-1])
    assert record["policy"] == "attention" and record["latency_s"] >= record["probe_s"] > 0


def test_every_place_offers_attention(backbone):
    assert "attention" in POLICY_NAMES and "attention" in ui.offered_policies()
    pipeline = Pipeline(backbone)  # no allocator
    assert pipeline.default_policy == "attention"
    assert ui.compare_policies(pipeline)[0] == "attention"
    assert "attention" in dict((v, k) for k, v in ui.policy_choices(pipeline))
    assert "attention" in cli.help_of(evaluator.EvalConfig.__dataclass_fields__["policies"])
    assert compat.OVERRIDE_FLAG == "--allow-mismatched-allocator"
