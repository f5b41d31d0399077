"""The bundled offline world: the trained backbone and allocator in assets/ are the defaults of
the CLI, small, and answer the bundled example clips correctly (the backbone at full resolution,
the allocator at 15 % of the visual tokens)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resadapt import ask
from resadapt.assets import default_allocator, default_backbone, examples

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@pytest.fixture(autouse=True)
def _bundled_defaults(monkeypatch):
    monkeypatch.delenv("RESADAPT_BACKBONE", raising=False)
    monkeypatch.delenv("RESADAPT_ALLOCATOR", raising=False)


def test_bundled_backbone_is_the_default_and_small():
    assert Path(default_backbone()) == ASSETS / "backbone"
    assert (ASSETS / "backbone" / "model.safetensors").stat().st_size <= 25 * 2**20
    size = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    # two backbone/allocator pairs (main-only, and count/main beside it): tens of MB in all
    assert size < 50 * 2**20, f"assets/ holds {size / 2**20:.1f} MiB"


@pytest.mark.parametrize("index", range(3))
def test_bundled_backbone_answers_the_examples_at_full_size(index, capsys):
    example = examples()[index]
    argv = [example["video"], example["question"], "--json", "--policy", "vanilla"]
    assert ask.main(argv) == 0  # the default backbone
    result = json.loads(capsys.readouterr().out)
    assert result["backbone"] == str(ASSETS / "backbone")
    assert result["answer"].strip() == example["answer"]
    assert result["retention"] == 1.0


def test_bundled_allocator_is_the_default_and_small():
    assert Path(default_allocator()) == ASSETS / "allocator"
    assert (ASSETS / "allocator" / "model.safetensors").stat().st_size <= 25 * 2**20


@pytest.mark.parametrize("index", range(3))
def test_learned_allocator_answers_the_examples_at_15_percent_of_the_tokens(index, capsys):
    """The default policy is the bundled allocator: at 15 % of the full-resolution tokens it gives
    the queried card's chunk the largest scale and the backbone answers right."""
    example = examples()[index]
    row = json.loads((ASSETS / "examples" / "data.jsonl").read_text().splitlines()[index])
    argv = [example["video"], example["question"], "--json", "--budget", "0.15"]
    assert ask.main(argv) == 0  # default backbone, default (learned) policy
    result = json.loads(capsys.readouterr().out)
    assert result["policy"] == "learned"
    assert result["retention"] <= 0.15
    scales = [c["scale"] for c in result["chunks"]]
    queried = row["evidence_frames"][0] // 2
    assert scales[queried] == max(scales) and scales.count(max(scales)) == 1
    assert result["answer"].strip() == example["answer"]


def test_bundled_probe_head_is_trained_by_capo_alone():
    folder = ASSETS / "allocator_probe"
    config = json.loads((folder / "config.json").read_text())
    recipe = json.loads((folder / "train_config.json").read_text())
    assert config["thumb_encoder"] == "probe" and recipe["attention_weight"] == 0
    assert config["backbone"] == "assets/backbone"
    assert "trained by CAPO alone" in (folder / "README.md").read_text()


@pytest.mark.parametrize("index", range(3))
def test_bundled_probe_head_answers_the_examples_at_15_percent(index, capsys):
    """The probe head ranks the queried card's chunk first from the backbone's own low-resolution
    pass; with select+prune it keeps that chunk and answers right."""
    example = examples()[index]
    row = json.loads((ASSETS / "examples" / "data.jsonl").read_text().splitlines()[index])
    argv = [example["video"], example["question"], "--json", "--budget", "0.15"]
    argv += ["--allocator", str(ASSETS / "allocator_probe"), "--policy", "learned+select+prune"]
    assert ask.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["retention"] <= 0.15 and result["probe_visual_tokens"] > 0
    kept = [i for i, c in enumerate(result["chunks"]) if c["visual_tokens"] > 0]
    assert row["evidence_frames"][0] // 2 in kept
    assert result["answer"].strip() == example["answer"]
