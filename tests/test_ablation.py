"""The multi-seed ablation summary: grouping by configuration and budget, hand-computed numbers."""

from __future__ import annotations

import json

import pytest

from benchmarks.ablation import main, summarise


def row(policy: str, budget, accuracy: float, retention: float = 0.15, spread: float = 0.2):
    return {
        "policy": policy,
        "budget": budget,
        "accuracy": accuracy,
        "mean_retention": retention,
        "mean_scale_spread": spread,
    }


def test_seeds_of_one_configuration_are_summarised_per_budget():
    rows = [
        row("learned:runs/abl/capo_att0_s0/best", 0.15, 0.4),
        row("learned:runs/abl/capo_att0_s1/best", 0.15, 0.6),
        row("learned:runs/abl/capo_att0_s2/best", 0.15, 0.5),
        row("learned:runs/abl/capo_att0_s0/best", None, 1.0, retention=0.3),
        row("learned:runs/abl/capo_att1_s0/best", 0.15, 0.9),
    ]
    first, no_budget, other = summarise(rows)
    assert (first["config"], first["budget"], first["seeds"]) == (
        "learned:runs/abl/capo_att0/best",
        0.15,
        3,
    )
    # mean 0.5; population std sqrt((0.01 + 0.01 + 0) / 3) = 0.08165
    assert first["accuracy_mean"] == pytest.approx(0.5)
    assert first["accuracy_std"] == pytest.approx(0.0816497, abs=1e-6)
    assert (first["accuracy_min"], first["accuracy_max"]) == (0.4, 0.6)
    assert no_budget["budget"] is None and no_budget["mean_retention_mean"] == pytest.approx(0.3)
    assert other["seeds"] == 1 and other["accuracy_std"] == 0


def test_the_table_prints_and_bad_input_is_one_error_line(tmp_path, capsys):
    setup = {"data": "test.jsonl", "frames": [16]}
    first, second, other = (tmp_path / f"{n}.json" for n in ("a", "b", "c"))
    first.write_text(
        json.dumps({"rows": [row("learned:a_s0", 0.15, 0.5)], "config": setup, "backbone": "bb"})
    )
    second.write_text(
        json.dumps({"rows": [row("learned:a_s1", 0.15, 0.7)], "config": setup, "backbone": "bb"})
    )
    assert main([str(first), str(second)]) == 0  # two evaluator runs pooled: 2 seeds
    assert "| learned:a | 15 % | 2 | 60.0 ± 10.0 % | 50.0–70.0 % |" in capsys.readouterr().out
    other.write_text(json.dumps({"rows": [], "config": {**setup, "frames": [8]}, "backbone": "bb"}))
    assert main([str(first), str(other)]) == 2
    assert "differ in data, frames or backbone" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read the evaluator's rows") and err.count("\n") == 1
