"""Allocation policies behind one interface."""

import numpy as np
import pytest
import torch

from allocator import Allocator, AllocatorConfig
from resadapt.errors import BudgetError, PolicyError
from resadapt.policies import AllocationContext, Content, Learned, make_policy
from resadapt.world.tiny import build_tokenizer


def context(thumbs, question="What is on the green card?"):
    return AllocationContext(
        thumbs=thumbs, timestamps=np.arange(len(thumbs)) * 0.5, question=question
    )


def flat_thumbs(k=4, side=32, value=100):
    return np.full((2 * k, side, side, 3), value, np.uint8)


def test_vanilla_uniform_random():
    ctx = context(flat_thumbs())
    assert make_policy("vanilla").scales(ctx).tolist() == [1.0] * 4
    assert make_policy("uniform", scale=0.3).scales(ctx).tolist() == [0.3] * 4
    a = make_policy("random", seed=1).scales(ctx)
    assert np.array_equal(a, make_policy("random", seed=1).scales(ctx))
    assert not np.array_equal(a, make_policy("random", seed=2).scales(ctx))
    assert ((a >= 0.2) & (a <= 1.0)).all()


def test_content_prefers_detail_and_novelty():
    thumbs = flat_thumbs(k=4)
    rng = np.random.default_rng(0)
    thumbs[4:6] = rng.integers(0, 255, thumbs[4:6].shape, dtype=np.uint8)  # chunk 2: textured
    scales = Content().scales(context(thumbs))
    assert scales.argmax() == 2
    assert scales[1] == scales.min()  # flat and identical to its predecessor
    assert Content().scales(context(flat_thumbs(k=3))).tolist() == pytest.approx([0.6] * 3)


def test_content_is_query_agnostic():
    thumbs = np.random.default_rng(1).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    a = Content().scales(context(thumbs, "red?"))
    b = Content().scales(context(thumbs, "blue?"))
    assert np.array_equal(a, b)


def test_learned_uses_the_allocator_beta_mean(tmp_path):
    tokenizer = build_tokenizer()
    config = AllocatorConfig(vocab_size=len(tokenizer), hidden_dim=32, thumb_side=32)
    torch.manual_seed(0)
    Allocator(config).save_pretrained(tmp_path)
    policy = Learned.load(tmp_path, tokenizer)
    thumbs = np.random.default_rng(1).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    scales = policy.scales(context(thumbs))
    assert scales.shape == (4,)
    assert ((scales >= config.scale_min) & (scales <= config.scale_max)).all()
    assert scales == pytest.approx(np.full(4, config.init_mean_scale), abs=0.05)
    assert make_policy("learned", learned=policy) is policy


def test_policy_errors():
    with pytest.raises(PolicyError, match="allocator"):
        make_policy("learned")
    with pytest.raises(PolicyError, match="unknown policy"):
        make_policy("oracle")
    with pytest.raises(BudgetError, match="scale"):
        make_policy("uniform", scale=1.5)
    with pytest.raises(PolicyError, match="no allocator checkpoint"):
        Learned.load("/nonexistent", build_tokenizer())
