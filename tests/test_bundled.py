"""The bundled offline world: the trained backbone in assets/ is the default of the CLI, small, and
answers the bundled example clips correctly at full resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resadapt import ask
from resadapt.assets import default_backbone, examples

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@pytest.fixture(autouse=True)
def _bundled_defaults(monkeypatch):
    monkeypatch.delenv("RESADAPT_BACKBONE", raising=False)
    monkeypatch.delenv("RESADAPT_ALLOCATOR", raising=False)


def test_bundled_backbone_is_the_default_and_small():
    assert Path(default_backbone()) == ASSETS / "backbone"
    assert (ASSETS / "backbone" / "model.safetensors").stat().st_size <= 25 * 2**20
    size = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert size < 40 * 2**20, f"assets/ holds {size / 2**20:.1f} MiB"


@pytest.mark.parametrize("index", range(3))
def test_bundled_backbone_answers_the_examples_at_full_size(index, capsys):
    example = examples()[index]
    argv = [example["video"], example["question"], "--json", "--policy", "vanilla"]
    assert ask.main(argv) == 0  # the default backbone
    result = json.loads(capsys.readouterr().out)
    assert result["backbone"] == str(ASSETS / "backbone")
    assert result["answer"].strip() == example["answer"]
    assert result["retention"] == 1.0
