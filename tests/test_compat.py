"""Allocator ↔ backbone compatibility: signatures, stamps and the model card, refusals in one
sentence, the explicit override, and which allocator a pipeline loads by default."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from allocator import Allocator, AllocatorConfig
from resadapt import ask, compat, ui
from resadapt.assets import BUNDLED_ALLOCATOR, BUNDLED_BACKBONE
from resadapt.backbone import Backbone
from resadapt.config import ModelConfig, Request
from resadapt.errors import PolicyError
from resadapt.pipeline import Pipeline, load_allocator, load_pipeline
from resadapt.world import TINY_BACKBONES
from tests.media import write_video
from tests.templates import with_real_template

QUESTION = "What is the stripe direction on the green card?"
SMALL = dict(hidden_dim=32, num_layers=1, num_heads=2, query_embed_dim=16, max_query_tokens=32)


@pytest.fixture(scope="module")
def qwen25():
    return Backbone.load("tiny-random-qwen2.5-vl")


@pytest.fixture(scope="module")
def qwen3():
    return Backbone.load("tiny-random-qwen3-vl")


@pytest.fixture(autouse=True)
def _no_allocator_env(monkeypatch):
    monkeypatch.delenv("RESADAPT_ALLOCATOR", raising=False)


def save(folder: Path, config: AllocatorConfig, **card) -> str:
    Allocator(config).save_pretrained(folder, model_card_kwargs=card)
    return str(folder)


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_signature_records_the_backbone(name):
    backbone = Backbone.load(name)
    sig = compat.backbone_signature(backbone)
    assert sig["backbone"] == name and sig["backbone_model_type"] == backbone.family
    assert sig["backbone_patch_factor"] == (28 if backbone.family == "qwen2_5_vl" else 32)
    assert sig["frames_per_chunk"] == 2
    assert sig["backbone_vocab_size"] == len(backbone.tokenizer.get_vocab())
    assert len(sig["backbone_vocab_sha256"]) == len(sig["backbone_chat_template_sha256"]) == 64
    real = compat.backbone_signature(with_real_template(Backbone.load(name)))
    assert real["backbone_chat_template_sha256"] != sig["backbone_chat_template_sha256"]
    assert real["backbone_vocab_sha256"] == sig["backbone_vocab_sha256"]


def test_stamped_allocator_saves_its_signature_and_a_model_card(qwen25, tmp_path):
    config = compat.stamp(AllocatorConfig(**SMALL), qwen25)
    validation = {"held-out accuracy at 15 %": "96.5 %"}
    path = save(
        tmp_path, config, train_command="python -m resadapt.train --steps 3", validation=validation
    )
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["backbone"] == "tiny-random-qwen2.5-vl" and saved["backbone_patch_factor"] == 28
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: resadapt" in card
    vocab = config.backbone_vocab_size
    for text in ("tiny-random-qwen2.5-vl", f"{vocab} tokens", "--steps 3", "96.5 %"):
        assert text in card
    loaded = Allocator.from_pretrained(path)
    assert loaded.config == config and compat.matches(loaded.config, qwen25)
    learned = load_allocator(path, qwen25)
    assert learned.warning is None


def test_a_mismatch_is_refused_in_one_sentence(qwen25, qwen3, tmp_path):
    path = save(tmp_path, compat.stamp(AllocatorConfig(**SMALL), qwen25))
    with pytest.raises(PolicyError) as info:
        load_allocator(path, qwen3)
    message = str(info.value)
    assert "\n" not in message and message.count(". ") == 0
    assert f"allocator {path} was trained against tiny-random-qwen2.5-vl" in message
    assert "but the backbone is tiny-random-qwen3-vl" in message
    assert "patch factor 28" in message and "patch factor 32" in message
    assert "--allow-mismatched-allocator" in message


def test_another_chat_template_is_a_mismatch(qwen25, tmp_path):
    path = save(tmp_path, compat.stamp(AllocatorConfig(**SMALL), qwen25))
    real = with_real_template(Backbone.load("tiny-random-qwen2.5-vl"))
    with pytest.raises(PolicyError, match="they differ in chat template"):
        load_allocator(path, real)


def test_other_weights_behind_the_same_tokenizer_are_a_mismatch(qwen25, tmp_path):
    """Two trainings that share a tokenizer and template differ in the weights fingerprint; a
    bfloat16 load of the same weights does not."""
    path = save(tmp_path, compat.stamp(AllocatorConfig(**SMALL), qwen25))
    other = Backbone.load("tiny-random-qwen2.5-vl")
    with torch.no_grad():  # a small update, as a fine-tune's: the values near zero change sign
        weight = other.model.get_input_embeddings().weight
        weight.add_(1e-3 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(PolicyError, match="they differ in weights"):
        load_allocator(path, other)
    for dtype in (torch.bfloat16, torch.float16):
        same = Backbone.load("tiny-random-qwen2.5-vl")
        same.model.to(dtype)
        assert compat.matches(
            AllocatorConfig.from_dict(json.loads(Path(path, "config.json").read_text())), same
        )
    # an allocator stamped before the fingerprint existed is still checked on the other fields
    old = dataclasses.replace(
        compat.stamp(AllocatorConfig(**SMALL), qwen25), backbone_weights_sha256=None
    )
    assert compat.matches(old, other)


def test_an_unstamped_allocator_is_refused_unless_allowed(qwen25, tmp_path):
    path = save(tmp_path, AllocatorConfig(**SMALL))
    with pytest.raises(PolicyError, match="records no backbone"):
        load_allocator(path, qwen25)
    learned = load_allocator(path, qwen25, allow_mismatched=True)
    assert "records no backbone" in learned.warning


def test_the_override_runs_loudly_and_never_folds_silently(qwen25, qwen3, tmp_path, caplog):
    config = compat.stamp(AllocatorConfig(**SMALL), qwen25)  # one table row per token
    path = save(tmp_path / "a", dataclasses.replace(config, vocab_size=64))
    video = str(write_video(tmp_path / "clip.mp4", num_frames=16, fps=8, height=96, width=128))
    with caplog.at_level("WARNING", logger="resadapt.compat"):
        learned = load_allocator(path, qwen3, allow_mismatched=True)
    assert "running it anyway" in caplog.text
    assert "folded" in learned.warning and learned.allocator.query_encoder.fold_ids
    result = Pipeline(qwen3, learned).ask(video, Request(question=QUESTION, num_frames=4))
    assert result.policy == "learned" and result.allocator_warning == learned.warning
    other = Pipeline(qwen3, learned).ask(
        video, Request(question=QUESTION, policy="uniform", num_frames=4)
    )
    assert other.allocator_warning is None


def test_stamping_refuses_a_table_smaller_than_the_vocabulary(qwen25):
    with pytest.raises(PolicyError, match="query table has 64 rows"):
        compat.stamp(AllocatorConfig(**SMALL, vocab_size=64), qwen25)
    folded = compat.stamp(AllocatorConfig(**SMALL, vocab_size=64, query_id_folding=True), qwen25)
    assert folded.query_id_folding and compat.matches(folded, qwen25)


def test_query_ids_beyond_the_table_are_refused_without_folding():
    model = Allocator(AllocatorConfig(**SMALL, vocab_size=64)).eval()
    ids = torch.tensor([[5, 70]])
    inputs = {
        "thumbs": torch.zeros(1, 2, 2, 3, 64, 64),
        "query_ids": ids,
        "query_mask": torch.ones_like(ids, dtype=torch.bool),
        "chunk_mask": torch.ones(1, 2, dtype=torch.bool),
        "chunk_times": torch.tensor([[0.5, 1.5]]),
    }
    with pytest.raises(ValueError, match="query token id 70 is outside the allocator's 64-row"):
        model(**inputs)
    model.query_encoder.fold_ids = True
    assert model(**inputs).alpha.shape == (1, 2)


def test_the_bundled_allocator_is_the_default_only_for_its_backbone(tmp_path):
    pipeline = load_pipeline(ModelConfig(backbone="tiny-random-qwen2.5-vl"))
    assert pipeline.learned is None and pipeline.default_policy == "attention"
    with pytest.raises(PolicyError, match="trained against assets/backbone"):
        load_pipeline(
            ModelConfig(backbone="tiny-random-qwen2.5-vl", allocator=str(BUNDLED_ALLOCATOR))
        )


def test_cli_refuses_a_mismatched_allocator_with_one_line(tmp_path, capsys):
    video = str(write_video(tmp_path / "clip.mp4", num_frames=8, fps=8, height=96, width=128))
    argv = [
        video,
        QUESTION,
        "--backbone",
        "tiny-random-qwen3-vl",
        "--allocator",
        str(BUNDLED_ALLOCATOR),
    ]
    assert ask.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err and "qwen3_vl" in err
    assert ask.main([*argv, "--allow-mismatched-allocator", "--frames", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["policy"] == "learned" and "assets/backbone" in result["allocator_warning"]


def test_the_bundled_allocator_records_the_bundled_backbone():
    config = AllocatorConfig.from_dict(json.loads((BUNDLED_ALLOCATOR / "config.json").read_text()))
    pipeline = load_pipeline(ModelConfig(backbone=str(BUNDLED_BACKBONE)))
    assert compat.matches(config, pipeline.backbone) and config.backbone == "assets/backbone"
    assert config.backbone_weights_sha256 is not None
    assert pipeline.learned.path == str(BUNDLED_ALLOCATOR) and pipeline.learned.warning is None
    card = (BUNDLED_ALLOCATOR / "README.md").read_text()
    assert config.backbone_vocab_sha256 in card and "python -m resadapt.train" in card


def test_the_two_bundled_pairs_cannot_be_crossed():
    """The count/main pair shares the main-only backbone's tokenizer and template: only the
    weights fingerprint tells the two backbones apart, and it does, both ways."""
    mixed = load_pipeline(ModelConfig(backbone="assets/backbone_mixed")).backbone
    main = load_pipeline(ModelConfig(backbone=str(BUNDLED_BACKBONE))).backbone
    with pytest.raises(PolicyError, match="they differ in weights"):
        load_allocator(str(BUNDLED_ALLOCATOR), mixed)
    with pytest.raises(PolicyError, match="they differ in weights"):
        load_allocator("assets/allocator_mixed", main)
    assert load_allocator("assets/allocator_mixed", mixed).warning is None


def test_the_app_refuses_a_mismatched_allocator_before_serving(capsys):
    """The app (and so its API) loads its models at start: a mismatch is one error line, exit 2,
    and nothing is served; with the override the page and every answer say so."""
    import app

    argv = ["--backbone", "tiny-random-qwen3-vl", "--allocator", str(BUNDLED_ALLOCATOR)]
    assert app.main([*argv, "--port", "1"]) == 2  # refused before any launch
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "assets/backbone" in err and "tiny-random-qwen3-vl" in err
    config = ModelConfig(
        backbone="tiny-random-qwen3-vl",
        allocator=str(BUNDLED_ALLOCATOR),
        allow_mismatched_allocator=True,
    )
    status = ui.status_markdown(load_pipeline(config))
    assert "⚠️ not trained against this backbone" in status and "qwen3_vl" in status
