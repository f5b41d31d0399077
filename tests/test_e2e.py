"""The end-to-end benchmark's code at tiny widths and on the bundled backbone (seconds): every
method meets the budget where it should, the stages sum to the total, ratios refer to vanilla, a
refused request is a row, one child process measures its own peak, and a bad flag is one error
line."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import e2e

FAST = {"tiny": True, "side": 224, "frames": 16, "frame_counts": (16,), "max_new_tokens": 2}
"""16 frames: 8 chunks, so a 0.15 budget holds one full-resolution chunk (keyframes keeps one)."""


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "e2e.json"
    setups = ("bundled", "qwen2.5-vl-7b")  # Qwen3-VL: in a child below
    config = e2e.E2EConfig(**FAST, setups=setups, warmup=False, json_out=str(out))
    rows = e2e.run(config, isolate=False)  # in this process: the child path is tested below
    return config, rows, json.loads(out.read_text())


def test_every_method_meets_the_budget(measured):
    config, rows, written = measured
    assert written["rows"] == rows and written["config"]["budget"] == config.budget
    by = {(r["setup"], r["method"]): r for r in rows}
    assert set(by) == {(s, m) for s in config.setups for m in e2e.METHODS}
    for setup in config.setups:
        vanilla = by[setup, "vanilla"]
        cap = math.floor(config.budget * vanilla["lm_tokens"] + 1e-9)
        assert vanilla["lm_tokens"] == vanilla["encoded_tokens"] == vanilla["vanilla_tokens"]
        for method in e2e.METHODS:
            row = by[setup, method]
            assert "error" not in row, row
            assert row["cap"] == cap
            if method != "vanilla":
                assert 0 < row["lm_tokens"] <= cap, (setup, method)
        assert by[setup, "prune"]["lm_tokens"] == cap
        assert by[setup, "prune"]["encoded_tokens"] == vanilla["encoded_tokens"]
        assert by[setup, "keyframes"]["encoded_tokens"] <= cap
        assert by[setup, "keyframes"]["kept_chunks"] < by[setup, "keyframes"]["chunks"]
        for method in ("attention", "keyframes"):
            assert by[setup, method]["probe_s"] > 0 and by[setup, method]["probe_tokens"] > 0


def test_stages_sum_and_ratios_refer_to_vanilla(measured):
    _, rows, _ = measured
    for row in rows:
        stages = [row[k] for k in e2e.STAGES]
        assert min(stages) >= -1e-9, row
        assert sum(stages) == pytest.approx(row["total_s"], rel=1e-6, abs=1e-9)
        assert row["allocate_s"] >= row["probe_s"]
        assert row["vision_s"] > 0 and row["prefill_s"] > 0
        assert row["peak_gib"] >= row["weights_gib"] > 0
        if row["method"] == "vanilla":
            assert row["total_ratio"] == row["peak_ratio"] == row["token_ratio"] == 1.0
        assert row["token_ratio"] <= 1.0
    printed = e2e.table(rows)
    assert printed.count("\n") == len(
        rows
    ) + 1 and "| bundled | 16 | prune | 43 (0.149) | 288 |" in (printed)


def test_the_report_needs_no_json_out_and_takes_combinations(capsys):
    """Without --json-out the printed table still has every row's ratios (it once died with
    KeyError: 'token_ratio' after measuring every row); a scorer+operator method is a row."""
    config = e2e.E2EConfig(**FAST, setups=("bundled",), warmup=False, encode_budget=0.5,
                           policies=("vanilla", "learned+prune"))  # fmt: skip
    assert config.json_out is None
    rows = e2e.run(config, isolate=False)
    out = capsys.readouterr().out
    assert [r["method"] for r in rows] == ["vanilla", "learned+prune"] and "error" not in rows[1]
    assert rows[1]["lm_tokens"] == rows[1]["cap"] < rows[1]["encoded_tokens"] <= 144  # 0.5 × 288
    assert rows[1]["total_ratio"] is not None and rows[1]["vision_s"] > 0
    assert "| bundled | 16 | learned+prune | 43 (0.149) |" in out
    assert "encode budget 0.5" in out


def test_a_refused_request_is_a_row():
    config = e2e.E2EConfig(**(FAST | {"frames": 514}), setups=("bundled",), policies=("learned",))
    (row,) = e2e.run(config, isolate=False)  # 257 chunks: over the allocator's 256
    assert row["refused"] and "at most 256" in row["error"]
    assert "| bundled | 514 | learned | refused: the video was sampled" in e2e.table([row])


def test_one_child_measures_its_own_peak(tmp_path, capsys):
    out = tmp_path / "child.json"
    argv = ["--setups", "qwen3-vl-8b", "--policies", "prune", "--tiny", "--side", "224"]
    argv += ["--frame-counts", "16", "--max-new-tokens", "2", "--json-out", str(out)]
    assert e2e.main(argv) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert "error" not in row, row
    assert row["peak_gib"] >= row["weights_gib"] > 0 and row["encoded_tokens"] > row["lm_tokens"]
    assert "| qwen3-vl-8b | 16 | prune |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--budget", "1.5"],
        ["--policies", "vanilla,best"],
        ["--policies", "vanilla,keyframes+prune"],
        ["--encode-budget", "0"],
        ["--frame-counts", "1"],
        ["--frame-counts", ""],
    ],
)
def test_bad_arguments_exit_2(argv, capsys):
    assert e2e.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_a_trained_probe_head_is_measured_with_its_own_probe_budget(tmp_path):
    from allocator import Allocator
    from resadapt import compat
    from resadapt.assets import BUNDLED_BACKBONE
    from resadapt.backbone import Backbone
    from tests.test_probe_head import probe_config

    bundled = Backbone.load(str(BUNDLED_BACKBONE))
    text = bundled.model.config.text_config
    cfg = probe_config(
        probe_layers=text.num_hidden_layers,
        probe_heads=text.num_attention_heads,
        probe_hidden_size=text.hidden_size,
        probe_budget=0.1,
        fills_budget=True,
    )
    Allocator(compat.stamp(cfg, bundled)).save_pretrained(tmp_path)
    config = e2e.E2EConfig(
        **FAST,
        setups=("bundled", "qwen2.5-vl-7b"),
        policies=("vanilla", "learned"),
        allocator=str(tmp_path),
        warmup=False,
    )
    by = {(r["setup"], r["method"]): r for r in e2e.run(config, isolate=False)}
    for setup in config.setups:
        vanilla, learned = by[setup, "vanilla"], by[setup, "learned"]
        assert "error" not in learned, learned
        assert learned["probe_s"] > 0 and learned["lm_tokens"] <= learned["cap"]
        # the head's own probe budget (0.1), not the default 0.25, on the real shape too
        assert 0 < learned["probe_tokens"] <= 0.15 * vanilla["lm_tokens"], (setup, learned)
