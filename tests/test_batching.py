"""Token-budgeted micro-batches: the grouping rule, and the same answers, scores and records as one
batch (tiny random Qwen2.5-VL, real synthetic videos)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from resadapt import eval as evaluator
from resadapt import eval_config
from resadapt.backbone import default_max_batch_tokens, micro_batches
from resadapt.data import load_examples
from resadapt.pipeline import Pipeline, load_backbone
from resadapt.rollout import Prompt, RolloutConfig, score_allocations
from resadapt.world import synth

TIMING_KEYS = ("allocate_s", "backbone_s", "latency_s", "probe_s", "tower_s", "decode_s", "e2e_s")
"""Record fields that are wall-clock times (they differ run to run)."""


def test_micro_batches_bound_rows_times_longest_row():
    assert micro_batches([5, 5, 5], 10) == [[0, 1], [2]]
    assert micro_batches([2, 8], 10) == [[0], [1]]  # padded: 2 rows of 8 > 10
    assert micro_batches([30, 1, 1], 10) == [[0], [1, 2]]  # over the budget: alone
    assert micro_batches([3] * 7, 1 << 40) == [list(range(7))]
    for lengths in ([4, 9, 1, 7, 7, 2], [1] * 5):
        batches = micro_batches(lengths, 12)
        assert sum(batches, []) == list(range(len(lengths)))
        assert all(len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 12 for b in batches)


def test_default_budget_depends_on_the_device():
    assert default_max_batch_tokens("cpu") < default_max_batch_tokens("cuda")
    assert default_max_batch_tokens("meta") == default_max_batch_tokens("cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rows = synth.write_dataset(root, 3, seed=1, task="main", size=112)
    config = evaluator.EvalConfig(
        data=str(rows),
        out=str(root / "out"),
        backbone="tiny-random-qwen2.5-vl",
        policies=eval_config.parse_policies("vanilla,uniform"),
        budgets=(0.5,),
        frames=(4,),
        max_new_tokens=6,
    )
    return config, Pipeline(load_backbone(config))


def _records(config, pipeline, max_batch_tokens):
    pipeline.backbone.max_batch_tokens = max_batch_tokens
    examples, _ = load_examples(config.data)
    out = list(evaluator.Evaluator(config, pipeline).run(examples))
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in out]


def test_evaluator_records_equal_with_one_row_per_micro_batch(world):
    config, pipeline = world
    batches = []
    generate = pipeline.backbone.generate

    def counting(inputs, *args, **kwargs):
        batches.append(int(inputs["input_ids"].shape[0]))
        return generate(inputs, *args, **kwargs)

    pipeline.backbone.generate = counting
    try:
        whole = _records(config, pipeline, 1 << 40)
        assert max(batches) == 3
        batches.clear()
        split = _records(config, pipeline, 1)
        assert set(batches) == {1}
    finally:
        del pipeline.backbone.generate
    assert json.dumps(split, sort_keys=True) == json.dumps(whole, sort_keys=True)


@pytest.mark.parametrize("reward", ["grade", "logprob"])
def test_rollout_scores_equal_under_a_small_budget(world, reward):
    config, pipeline = world
    examples, _ = load_examples(config.data)
    request = evaluator.Evaluator(config, pipeline)._request(
        examples[0], eval_config.PolicySpec("uniform"), eval_config.Budget(), 4
    )
    prompt = Prompt(examples[0], request, pipeline.decode(examples[0].video, request), 0)
    scales = np.array([[1.0, 1.0], [0.5, 0.3], [0.2, 0.9]])  # (M, K)
    config = RolloutConfig(reward=reward, answers_per_rollout=1, max_new_tokens=6, temperature=1.0)
    pipeline.backbone.max_batch_tokens = 1 << 40
    whole = score_allocations(pipeline, prompt, scales, config, seed=0)
    pipeline.backbone.max_batch_tokens = 1
    split = score_allocations(pipeline, prompt, scales, config, seed=0)
    torch.testing.assert_close(split[0], whole[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(split[1], whole[1]) and split[2] == whole[2]
