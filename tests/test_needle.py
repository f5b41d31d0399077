"""The needle test: the world's clips through the registered source, the ranking, the stored JSON
beside the checkpoint, and the attention policies reading the chosen heads (named in the result)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from resadapt import heads, needle
from resadapt.backbone import Backbone
from resadapt.config import Request
from resadapt.errors import ResAdaptError
from resadapt.pipeline import Pipeline


def test_choose_keeps_the_best_heads_and_names_their_columns():
    rates = np.zeros(2 * 3 * 4)  # rows × layers × heads
    rates[1 * 12 + 2 * 4 + 0] = 1.0  # the answer position, layer 2, head 0
    rates[1 * 12 + 2 * 4 + 1] = 0.97
    rates[5] = 0.5
    chosen = needle.choose(rates, layers=3, heads=4)
    assert chosen == [["last", 2, 0, 1.0], ["last", 2, 1, 0.97]]
    choice = heads.NeedleChoice("b", None, chosen, 8, 16, 168, 0.25, 0.5)
    assert choice.columns(3, 4) == [20, 21] and choice.deepest_layer == 3
    assert "layer 2 head 0" in choice.describe()


def test_the_command_writes_the_choice_and_attention_reads_it(tmp_path, video, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the stored choice of a named backbone: ~/.cache
    out = tmp_path / "needle.json"
    code = needle.main(
        ["--backbone", "tiny-random-qwen2.5-vl", "--out", str(out), "--clips", "2",
         "--num-frames", "6", "--size", "112"]
    )  # fmt: skip
    assert code == 0
    stored = json.loads(out.read_text())
    assert stored["clips"] == 2 and stored["heads"] and stored["weights_sha256"]
    backbone = Backbone.load("tiny-random-qwen2.5-vl")
    pipeline = Pipeline(backbone)
    request = Request(question="Which card?", num_frames=8, policy="attention", budget=0.5)
    sampled = pipeline.decode(video, request)
    plain = pipeline.allocate(sampled, request)
    assert not any("needle" in n for n in plain.notes)
    target = heads.needle_path(backbone.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(out, target)
    assert str(target).startswith(str(tmp_path))
    heads._stored.cache_clear()
    found = pipeline.allocate(sampled, request)
    assert any("needle-found heads" in n for n in found.notes)
    assert found.probe is not None and found.probe.visual_tokens > 0
    heads._stored.cache_clear()


def test_bad_flags_are_one_sentence(capsys):
    assert needle.main(["--backbone", "tiny-random-qwen2.5-vl", "--clips", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(ResAdaptError, match="cannot read the needle choice"):
        heads.load("/nonexistent/needle.json")
