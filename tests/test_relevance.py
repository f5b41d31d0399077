"""The attention probe: last-row attention, per-chunk shares, and the distillation loss."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from resadapt.backbone import Backbone
from resadapt.relevance import chunk_attention, distillation_loss, pad_targets, recording
from resadapt.world import TINY_BACKBONES
from tests.test_backbone import QUESTION, chunked, clip


@pytest.fixture(scope="module", params=TINY_BACKBONES)
def backbone(request):
    return Backbone.load(request.param)


def two_videos(backbone):
    """Two clips of 3 and 4 chunks at mixed sizes: a left-padded batch."""
    f = backbone.geometry.factor
    frames, times, _ = clip(backbone, num_frames=6, seed=1)
    small = chunked(frames, times, sizes=[(2 * f, 2 * f), (3 * f, 2 * f), (f, 2 * f)])
    frames, times, _ = clip(backbone, num_frames=8, seed=2)
    return [small, chunked(frames, times)]


def test_probe_rows_equal_eager_attention_and_outputs_are_unchanged(backbone):
    model = backbone.model
    videos = two_videos(backbone)
    inputs = backbone.prepare(videos, [QUESTION, "Which digit is on the green card?"])
    kernel = model.config.text_config._attn_implementation
    with torch.no_grad():
        reference = model(**inputs).logits
        with recording(model) as rows:
            probed = model(**inputs).logits
        assert model.config.text_config._attn_implementation == kernel  # restored
        model.set_attn_implementation({"text_config": "eager"})
        try:
            eager = model(**inputs, output_attentions=True).attentions
        finally:
            model.set_attn_implementation({"text_config": kernel})
    real = inputs["attention_mask"].bool()  # (B, L) padding logits are arbitrary
    torch.testing.assert_close(probed[real], reference[real], rtol=1e-4, atol=1e-4)
    assert len(rows) == len(eager) == model.config.text_config.num_hidden_layers
    for row, full in zip(rows, eager, strict=True):
        torch.testing.assert_close(row[:, :, -1], full[:, :, -1].float(), rtol=1e-4, atol=1e-5)


def test_chunk_shares_sum_to_one_and_batching_does_not_change_them(backbone):
    videos = two_videos(backbone)
    questions = [QUESTION, "Which digit is on the green card?"]
    batched = chunk_attention(backbone, videos, questions)
    assert [len(s) for s in batched] == [3, 4]
    for video, question, shares in zip(videos, questions, batched, strict=True):
        assert float(shares.min()) >= 0
        torch.testing.assert_close(shares.sum(), torch.tensor(1.0))
        (alone,) = chunk_attention(backbone, [video], [question])
        torch.testing.assert_close(shares, alone, rtol=1e-3, atol=1e-5)
    assert float(batched[1].std()) > 0  # the shares differ between chunks


def test_distillation_is_zero_at_the_target_and_pulls_toward_it():
    mask = torch.tensor([[True, True, True], [True, True, False]])
    targets = pad_targets([torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.5, 0.5])], 3)
    assert targets.shape == (2, 3) and float(targets[1, 2]) == 0
    exact = torch.where(mask, targets.clamp_min(1e-12).log(), 0.0)
    assert float(distillation_loss(exact, targets, mask)) == pytest.approx(0.0, abs=1e-6)
    logits = torch.zeros(2, 3, requires_grad=True)
    log_shares = logits.masked_fill(~mask, -torch.inf).log_softmax(dim=1).masked_fill(~mask, 0.0)
    loss = distillation_loss(log_shares, targets, mask)
    # uniform predictions: KL = Σ t log(t K) for the first video, 0 for the second (mean of two)
    expected = float((targets[0] * (targets[0] * 3).log()).sum()) / 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    step = -logits.grad[0]  # gradient descent raises the chunk the target prefers most
    assert int(step.argmax()) == 0 and int(step.argmin()) == 2
    assert np.allclose(logits.grad[1].numpy(), 0.0, atol=1e-7)


def test_sharpened_targets_keep_the_ranking_and_concentrate():
    shares = torch.tensor([0.1, 0.5, 0.15, 0.25])
    sharp = pad_targets([shares], 5, temperature=0.25)[0]
    assert float(sharp[4]) == 0 and float(sharp.sum()) == pytest.approx(1.0, abs=1e-6)
    assert sharp[:4].argsort().tolist() == shares.argsort().tolist()
    assert float(sharp[1]) == pytest.approx(0.5**4 / float((shares**4).sum()), rel=1e-5)


def test_importing_the_probe_registers_nothing():
    """The probe joins transformers' attention registries on first use, not at import."""
    code = (
        "import resadapt.relevance as r; from transformers import AttentionInterface as A; "
        "assert r.PROBE not in A._global_mapping; r._register(); "
        "assert r.PROBE in A._global_mapping"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
