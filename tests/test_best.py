"""A run keeps its best: ``best/`` by validation accuracy at the training budget (ties to the
lower retention), written atomically, and the best-so-far value in the training state, so that a
resumed run keeps choosing against it. Per-step α + β statistics are in the metrics; the runs use
``--advantage capo_chunk`` and ``--max-concentration``, so both paths run end to end."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import safetensors.torch
import torch

from resadapt.checkpoint import BEST, FINAL, METRICS_FILE, TRAINING_STATE, better_validation
from resadapt.train import main
from tests.test_train import data, one_thread, run_args  # noqa: F401 (fixtures)


def test_better_validation_prefers_accuracy_then_lower_retention():
    best = {"accuracy": 0.5, "retention": 0.15}
    assert better_validation({"accuracy": 0.1, "retention": 0.9}, None)
    assert better_validation({"accuracy": 0.6, "retention": 0.9}, best)
    assert not better_validation({"accuracy": 0.4, "retention": 0.01}, best)
    assert better_validation({"accuracy": 0.5, "retention": 0.14}, best)  # tie: cheaper wins
    assert not better_validation({"accuracy": 0.5, "retention": 0.15}, best)  # full tie: keep
    assert not better_validation({"accuracy": math.nan, "retention": 0.1}, None)


def weights(folder):
    return safetensors.torch.load_file(str(folder / "model.safetensors"))


def best_of(lines: list[dict]) -> dict:
    best = None
    for r in lines:
        if r["split"] == "val" and better_validation(r, best):
            best = {k: r[k] for k in ("step", "accuracy", "retention")}
    return best


@pytest.mark.slow  # two 3-step runs with a validation every step: ~7 s, more on busy cores
def test_best_checkpoint_is_the_best_validation_and_survives_resume(data, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    val = ["--val-data", str(data["val"]), "--val-size", "2", "--val-every", "1"]
    argv = run_args(data, out, steps=3) + val + ["--checkpoint-every", "1", "--lr", "3e-2"]
    argv += ["--max-concentration", "3", "--advantage", "capo_chunk"]  # the cap fires: α + β ≈ 4
    assert main(argv) == 0
    lines = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    want = best_of(lines)
    state = torch.load(out / BEST / TRAINING_STATE, weights_only=True)
    assert state["best"] == want and state["step"] == want["step"]
    final = torch.load(out / FINAL / TRAINING_STATE, weights_only=True)
    assert final["best"] == want
    chosen, at = weights(out / BEST), weights(out / f"checkpoint-{want['step']}")
    assert all(torch.equal(chosen[k], at[k]) for k in chosen)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert lines[0]["concentration_max"] > 3  # step 1: α + β ≈ 4 at init
    for r in lines:
        if r["split"] == "train":
            assert 2 <= r["concentration_mean"] <= r["concentration_max"], r
            assert (r["cap_loss"] > 0) == (r["concentration_max"] > 3), r

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-1", resumed / "checkpoint-1")
    argv = run_args(data, resumed, steps=3) + val + ["--checkpoint-every", "1", "--lr", "3e-2"]
    argv += ["--max-concentration", "3", "--advantage", "capo_chunk", "--resume", "auto"]
    assert main(argv) == 0
    again = torch.load(resumed / FINAL / TRAINING_STATE, weights_only=True)
    assert again["best"] == want
