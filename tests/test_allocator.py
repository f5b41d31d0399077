"""Invariants of the allocator network, its Beta policy and its save/load."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from allocator import (
    Allocator,
    AllocatorConfig,
    AllocatorOutput,
    log_prob,
    mean_scale,
    sample,
)

B, K, L = 2, 5, 7  # videos, chunks, query tokens

SMALL = dict(hidden_dim=64, num_layers=1, num_heads=2, vocab_size=500, query_embed_dim=16)
SMALL["query_id_folding"] = True  # make_inputs draws Qwen-sized ids: fold them, explicitly


def make_inputs(config: AllocatorConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s, f = config.thumb_side, config.frames_per_chunk
    chunk_mask = torch.ones(B, K, dtype=torch.bool)
    chunk_mask[1, 3:] = False  # video 1 has 3 chunks, 2 padding
    query_mask = torch.ones(B, L, dtype=torch.bool)
    query_mask[0, 4:] = False
    return dict(
        thumbs=torch.rand(B, K, f, 3, s, s, generator=g),  # (B, K, F, 3, S, S)
        query_ids=torch.randint(0, 150_000, (B, L), generator=g),  # (B, L) Qwen-sized ids
        query_mask=query_mask,  # (B, L)
        chunk_mask=chunk_mask,  # (B, K)
        chunk_times=torch.arange(K).float().expand(B, K) * 2.0 + 1.0,  # (B, K) mid-times, s
    )


@pytest.fixture(scope="module")
def small() -> Allocator:
    torch.manual_seed(0)
    return Allocator(AllocatorConfig(**SMALL)).eval()


def test_forward_shapes_and_beta_parameters_at_least_one(small):
    out = small(**make_inputs(small.config))
    assert isinstance(out, AllocatorOutput)
    assert out.alpha.shape == out.beta.shape == (B, K)
    assert out.features.shape == (B, K, small.config.hidden_dim)
    assert bool((out.alpha >= 1).all()) and bool((out.beta >= 1).all())
    assert torch.isfinite(out.alpha).all() and torch.isfinite(out.beta).all()


def test_padding_chunks_do_not_affect_valid_chunks(small):
    inputs = make_inputs(small.config)
    before = small(**inputs)
    inputs["thumbs"][1, 3:] = torch.rand_like(inputs["thumbs"][1, 3:])
    inputs["thumbs"][1, 4] = float("nan")  # even garbage padding must not leak
    inputs["chunk_times"][1, 3:] = 1e6
    after = small(**inputs)
    valid = inputs["chunk_mask"]
    torch.testing.assert_close(after.alpha[valid], before.alpha[valid], rtol=0, atol=1e-6)
    torch.testing.assert_close(after.beta[valid], before.beta[valid], rtol=0, atol=1e-6)
    torch.testing.assert_close(after.features, before.features, rtol=0, atol=1e-6)
    assert bool((after.features[~valid] == 0).all())


def test_padding_query_tokens_do_not_affect_outputs(small):
    inputs = make_inputs(small.config)
    before = small(**inputs)
    inputs["query_ids"][0, 4:] = 12345
    after = small(**inputs)
    torch.testing.assert_close(after.alpha, before.alpha, rtol=0, atol=1e-6)


def test_empty_question_is_allowed(small):
    inputs = make_inputs(small.config)
    inputs["query_mask"][:] = False
    out = small(**inputs)
    assert torch.isfinite(out.alpha).all()


@pytest.mark.parametrize("init_mean_scale", [0.3, 0.6, 0.9])
def test_initial_mean_scale_matches_config(init_mean_scale):
    torch.manual_seed(0)
    model = Allocator(AllocatorConfig(**SMALL, init_mean_scale=init_mean_scale)).eval()
    out = model(**make_inputs(model.config))
    scales = mean_scale(out.alpha, out.beta, scale_min=0.2, scale_max=1.0)
    torch.testing.assert_close(scales, torch.full_like(scales, init_mean_scale), rtol=0, atol=0.02)
    # the smaller Beta parameter starts at init_min_shape = 2: broad but unimodal
    smaller = torch.minimum(out.alpha, out.beta)
    torch.testing.assert_close(smaller, torch.full_like(smaller, 2.0), rtol=0, atol=0.1)


def test_default_allocator_has_at_most_five_million_parameters():
    count = sum(p.numel() for p in Allocator().parameters())
    assert count <= 5_000_000, count


def test_default_allocator_runs_on_default_thumbnails():
    torch.manual_seed(0)
    model = Allocator(AllocatorConfig(query_id_folding=True)).eval()  # Qwen-sized ids, folded
    out = model(**make_inputs(model.config))
    assert out.alpha.shape == (B, K)


def test_save_and_load_reproduce_outputs_exactly(small, tmp_path):
    inputs = make_inputs(small.config)
    small.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved == small.config.to_dict()
    loaded = Allocator.from_pretrained(tmp_path)
    assert loaded.config == small.config
    a, b = small(**inputs), loaded(**inputs)
    assert torch.equal(a.alpha, b.alpha) and torch.equal(a.beta, b.beta)


def test_loading_a_mismatched_checkpoint_names_the_problem(small, tmp_path):
    small.save_pretrained(tmp_path)
    state = safetensors.torch.load_file(tmp_path / "model.safetensors")
    state.pop("head.net.4.bias")
    safetensors.torch.save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="missing"):
        Allocator.from_pretrained(tmp_path)


def test_backbone_query_embeddings_are_used_but_not_saved(tmp_path):
    torch.manual_seed(0)
    config = AllocatorConfig(**{**SMALL, "query_embed_dim": 24}, query_encoder="backbone")
    model = Allocator(config).eval()
    inputs = make_inputs(config)
    with pytest.raises(RuntimeError, match="set_query_embeddings"):
        model(**inputs)
    with pytest.raises(ValueError, match="query_embed_dim"):
        model.set_query_embeddings(torch.randn(150_000, 32))
    weight = torch.randn(150_000, 24)  # the backbone's frozen input embeddings (V, E)
    model.set_query_embeddings(weight)
    out = model(**inputs)
    model.save_pretrained(tmp_path)
    state = safetensors.torch.load_file(tmp_path / "model.safetensors")
    assert all(tensor.shape != weight.shape for tensor in state.values())
    loaded = Allocator.from_pretrained(tmp_path)
    loaded.set_query_embeddings(weight)
    assert torch.equal(loaded(**inputs).alpha, out.alpha)


def test_gradients_reach_every_trainable_parameter(small):
    model = Allocator(small.config).train()
    out = model(**make_inputs(model.config))
    actions = torch.full_like(out.alpha, 0.3)
    log_prob(out.alpha, out.beta, actions).sum().backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert unused == []


@pytest.mark.parametrize(
    ("change", "fix"),
    [
        (dict(hidden_dim=72, num_heads=2), "multiple of 16"),
        (dict(num_heads=3), "divisors"),
        (dict(init_mean_scale=1.0), "strictly between"),
        (dict(scale_min=1.0), "scale_min < scale_max"),
        (dict(query_encoder="bert"), "choose one of"),
        (dict(thumb_encoder="pretrained"), "pretrained_vision"),
        (dict(init_min_shape=1.0), "> 1"),
    ],
)
def test_config_errors_name_the_fix(change, fix):
    with pytest.raises(ValueError, match=fix):
        AllocatorConfig(**change)


def test_bad_inputs_are_refused_with_the_expected_shape(small):
    inputs = make_inputs(small.config)
    with pytest.raises(ValueError, match="thumbs must be"):
        small(**{**inputs, "thumbs": inputs["thumbs"][:, :, :1]})
    no_chunks = torch.zeros(B, K, dtype=torch.bool)
    with pytest.raises(ValueError, match="at least one valid chunk"):
        small(**{**inputs, "chunk_mask": no_chunks})


def test_log_prob_matches_torch_beta():
    alpha = torch.tensor([[1.0, 2.5, 7.0]])
    beta = torch.tensor([[1.0, 1.5, 3.0]])
    actions = torch.tensor([[0.5, 0.25, 0.9]])
    expected = torch.distributions.Beta(alpha, beta).log_prob(actions)
    torch.testing.assert_close(log_prob(alpha, beta, actions), expected)
    # actions at the boundary are clamped to [1e-6, 1 - 1e-6]: finite
    edge = log_prob(alpha, beta, torch.tensor([[0.0, 1.0, 0.0]]))
    assert torch.isfinite(edge).all()


def test_mean_scale_maps_beta_mean_to_scale():
    # α/(α+β) = 3/4 → 0.2 + 0.75 * 0.8 = 0.8
    scale = mean_scale(torch.tensor([3.0]), torch.tensor([1.0]), scale_min=0.2, scale_max=1.0)
    torch.testing.assert_close(scale, torch.tensor([0.8]))


def test_sample_is_reproducible_and_has_beta_moments():
    alpha = torch.tensor([1.0, 2.0, 6.0]).expand(40_000, 3)  # (B, K)
    beta = torch.tensor([1.0, 5.0, 1.5]).expand(40_000, 3)
    actions, scales, lp = sample(alpha, beta, torch.Generator().manual_seed(1))
    again, _, _ = sample(alpha, beta, torch.Generator().manual_seed(1))
    assert torch.equal(actions, again)
    assert actions.shape == scales.shape == lp.shape == (40_000, 3)
    assert bool(((actions > 0) & (actions < 1)).all())
    torch.testing.assert_close(scales, 0.2 + 0.8 * actions)
    dist = torch.distributions.Beta(alpha[0], beta[0])
    torch.testing.assert_close(actions.mean(0), dist.mean, rtol=0, atol=0.01)
    torch.testing.assert_close(actions.var(0), dist.variance, rtol=0.05, atol=0.0)
    torch.testing.assert_close(lp, torch.distributions.Beta(alpha, beta).log_prob(actions))


def test_sample_log_prob_is_differentiable():
    alpha = torch.tensor([[2.0, 3.0]], requires_grad=True)
    beta = torch.tensor([[2.0, 1.5]], requires_grad=True)
    _, _, lp = sample(alpha, beta, torch.Generator().manual_seed(0))
    lp.sum().backward()
    assert alpha.grad is not None and beta.grad is not None


def test_pretrained_tower_variant_is_frozen_and_not_saved(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    tower_dir = tmp_path / "tower"
    tower_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    CLIPVisionModel(tower_config).save_pretrained(tower_dir)
    config = AllocatorConfig(**SMALL, thumb_encoder="pretrained", pretrained_vision=str(tower_dir))
    model = Allocator(config).train()
    tower = model.thumb_encoder.tower
    assert not any(p.requires_grad for p in tower.parameters()) and not tower.training
    inputs = make_inputs(config)
    out = model(**inputs)
    assert out.alpha.shape == (B, K)
    out.alpha.sum().backward()
    assert model.thumb_encoder.proj.weight.grad is not None

    model.eval().save_pretrained(tmp_path / "allocator")
    state = safetensors.torch.load_file(tmp_path / "allocator" / "model.safetensors")
    assert not any(name.startswith("thumb_encoder.tower.") for name in state)
    loaded = Allocator.from_pretrained(tmp_path / "allocator")
    assert torch.equal(loaded(**inputs).alpha, model(**inputs).alpha)


def test_allocator_package_does_not_import_resadapt():
    code = "import sys, allocator; assert not any(m.startswith('resadapt') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_query_match_shares_sum_to_one_per_video_and_padding_is_zero(small):
    inputs = make_inputs(small.config)
    b, k = inputs["chunk_mask"].shape
    valid = inputs["chunk_mask"].reshape(-1)
    frames = inputs["thumbs"].reshape(b * k, *inputs["thumbs"].shape[2:])[valid]
    with torch.no_grad():
        _, spatial = small.thumb_encoder(frames)  # (N*F, P, C)
        query, keep = small.query_encoder(inputs["query_ids"], inputs["query_mask"])
        log_shares = small.query_match(spatial, query, keep, inputs["chunk_mask"])  # (B, K)
        out = small(**inputs)
    side = small.config.thumb_side // 2**small.config.match_stage
    assert spatial.shape == (int(valid.sum()) * 2, side * side, small.thumb_encoder.map_dim)
    assert log_shares.shape == (b, k)
    assert bool((log_shares[~inputs["chunk_mask"]] == 0).all())
    shares = log_shares.exp() * inputs["chunk_mask"]
    torch.testing.assert_close(shares.sum(dim=1), torch.ones(b), rtol=0, atol=1e-5)
    assert float(shares[inputs["chunk_mask"]].std()) > 0  # not a constant
    torch.testing.assert_close(out.match_log_share, log_shares)


def _coloured_cards(g: torch.Generator, n: int, side: int = 32):
    """n videos of 4 chunks on grey noise; 3 chunks show one square each, in distinct colours;
    the 'question' is one token naming a shown colour; the target is that square's chunk."""
    colours = torch.tensor([[0.8, 0.2, 0.2], [0.2, 0.7, 0.3], [0.2, 0.3, 0.8], [0.8, 0.8, 0.2]])
    thumbs = 0.5 + 0.05 * torch.randn(n, 4, 2, 3, side, side, generator=g)
    query_ids = torch.zeros(n, 1, dtype=torch.long)
    target = torch.zeros(n, dtype=torch.long)
    for i in range(n):
        chunks = torch.randperm(4, generator=g)[:3]
        shown = torch.randperm(4, generator=g)[:3]
        for chunk, colour in zip(chunks.tolist(), shown.tolist(), strict=True):
            top, left = torch.randint(0, side - 8, (2,), generator=g).tolist()
            thumbs[i, chunk, :, :, top : top + 8, left : left + 8] = colours[colour, :, None, None]
        pick = int(torch.randint(0, 3, (1,), generator=g))
        query_ids[i, 0] = 10 + shown[pick]
        target[i] = chunks[pick]
    inputs = dict(
        thumbs=thumbs,
        query_ids=query_ids,
        query_mask=torch.ones(n, 1, dtype=torch.bool),
        chunk_mask=torch.ones(n, 4, dtype=torch.bool),
        chunk_times=torch.arange(4).float().expand(n, 4).clone(),
    )
    return inputs, target


def test_allocator_learns_to_raise_the_chunk_the_question_names():
    """The query-match path is learnable: a few supervised steps teach the allocator to give the
    largest scale to the chunk showing the colour the question names (chance: 1/4)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = Allocator(AllocatorConfig(**SMALL, thumb_side=32)).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        inputs, target = _coloured_cards(g, 32)
        out = model(**inputs)
        logits = out.alpha.log() - out.beta.log()  # (B, K) monotone in the Beta mean
        loss = torch.nn.functional.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    inputs, target = _coloured_cards(torch.Generator().manual_seed(1), 64)
    with torch.no_grad():
        out = model.eval()(**inputs)
    top = mean_scale(out.alpha, out.beta, scale_min=0.2, scale_max=1.0).argmax(dim=1)
    assert float((top == target).float().mean()) >= 0.9
