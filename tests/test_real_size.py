"""The real-size benchmark's code at tiny widths (seconds): the published layouts build at reduced
depth, every stage is timed, and token-budgeted batching splits the rows."""

from __future__ import annotations

import pytest

from benchmarks import real_size
from benchmarks.decode import write_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_clip(path, width=128, height=128, seconds=0.5, moving=True)
    return path


def test_layouts_at_reduced_depth():
    tokenizer = real_size.build_tiny("tiny-random-qwen3-vl")[1].tokenizer
    values = real_size.model_config("qwen3-vl-8b", 2, 2, False, tokenizer)
    assert values["text_config"]["hidden_size"] == 4096 and values["vision_config"]["depth"] == 2
    assert values["vision_config"]["deepstack_visual_indexes"] == [1]
    values = real_size.model_config("qwen2.5-vl-7b", 2, 9, False, tokenizer)
    assert values["vision_config"]["fullatt_block_indexes"] == [7]
    assert values["text_config"]["vocab_size"] == 152064


@pytest.mark.parametrize("family", list(real_size.FAMILIES))
def test_one_measurement_at_tiny_widths(clip, family):
    config = real_size.RealSizeConfig(
        tiny=True, frames=4, side=128, budget=0.5, rows=2, max_batch_tokens=1, max_new_tokens=2
    )
    runs = [("fixed", "budgeted"), ("vanilla", "batched"), ("attention", "budgeted")]
    for policy, batching in runs:
        result = real_size.measure(config, family, policy, batching, str(clip))
        assert result["micro_batches"] == (2 if batching == "budgeted" else 1)
        assert result["peak_gib"] >= result["weights_gib"] > 0
        for stage in ("decode_s", "allocate_s", "prepare_s", "vision_s", "prefill_s"):
            assert result[stage] > 0, stage
        if policy != "vanilla":
            assert result["visual_tokens_per_row"] <= 0.5 * result["vanilla_tokens_per_row"]
    assert "| " + family in real_size.table([result])


@pytest.mark.parametrize("family", list(real_size.FAMILIES))
def test_the_probe_head_rows_count_the_probe_and_a_training_step(clip, family):
    config = real_size.RealSizeConfig(
        tiny=True, frames=4, side=128, budget=0.5, rows=2, max_new_tokens=2
    )
    inference = real_size.measure(config, family, "probe", "batched", str(clip))
    assert inference["probe_visual_tokens"] > 0 and inference["train_s"] is None
    assert inference["visual_tokens_per_row"] <= 0.5 * inference["vanilla_tokens_per_row"]
    step = real_size.measure(config, family, "probe-train", "batched", str(clip))
    assert step["train_s"] > 0 and step["peak_gib"] >= step["weights_gib"]
    assert "| " + family in real_size.table([inference, step])
