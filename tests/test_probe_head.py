"""The probe head: the probe pass's features on both tiny families, the head's uniform start and
depth refusal, the budget as a ceiling, CAPO's uniform reference, and a seconds-long bandit where
one layer-head carries the evidence and CAPO alone must learn to read it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import resadapt.trainer as trainer
from allocator import Allocator, AllocatorConfig, log_prob, mean_scale, sample
from resadapt.capo import capo_advantages, reference_zscore, scale_cost
from resadapt.config import Request
from resadapt.errors import PolicyError
from resadapt.geometry import fit_budget
from resadapt.pipeline import Pipeline
from resadapt.policies import make_policy
from resadapt.policies.learned import Learned
from resadapt.probe import FeatureCache, probe_features
from tests.test_learning import one_thread, update  # noqa: F401 (one_thread: autouse fixture)

PROMPTS, CHUNKS, ROLLOUTS = 8, 4, 8  # B, K, M
LAYERS, HEADS, WIDTH = 3, 4, 16  # R, H, W of the toy probe VLM
SIGNAL = 7
"""The one attention feature (row group × layer × head) that puts its mass on the evidence."""
PAY_SCALE = 0.5
"""The toy reward: 1 when the evidence chunk's sampled scale exceeds this, else 0."""
RISE = 0.75
STEPS = 30


def probe_config(**kw) -> AllocatorConfig:
    values = dict(
        thumb_encoder="probe",
        query_match=False,
        hidden_dim=32,
        num_layers=1,
        num_heads=2,
        thumb_side=16,
        probe_layers=LAYERS,
        probe_heads=HEADS,
        probe_hidden_size=WIDTH,
        fills_budget=False,
    )
    return AllocatorConfig(**{**values, **kw})


def toy_batch(g: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """B prompts whose evidence chunk only feature SIGNAL shows; every other feature, and the
    hidden states, are noise. Returns the allocator's inputs and the evidence chunk (B,)."""
    a = 2 * LAYERS * HEADS
    evidence = torch.randint(0, CHUNKS, (PROMPTS,), generator=g)  # (B,)
    shares = torch.distributions.Dirichlet(torch.ones(CHUNKS)).sample((PROMPTS, a))  # (B, A, K)
    peaked = torch.full((PROMPTS, CHUNKS), 0.1 / (CHUNKS - 1))
    peaked[torch.arange(PROMPTS), evidence] = 0.9
    shares[:, SIGNAL] = peaked
    inputs = {
        "thumbs": torch.zeros(PROMPTS, CHUNKS, 2, 3, 16, 16),
        "query_ids": torch.zeros(PROMPTS, 1, dtype=torch.long),
        "query_mask": torch.ones(PROMPTS, 1, dtype=torch.bool),
        "chunk_mask": torch.ones(PROMPTS, CHUNKS, dtype=torch.bool),
        "chunk_times": torch.arange(CHUNKS, dtype=torch.float32).expand(PROMPTS, CHUNKS),
        "probe_attention": shares.transpose(1, 2).contiguous(),  # (B, K, A)
        "probe_hidden": torch.randn(PROMPTS, CHUNKS, LAYERS, WIDTH, generator=g),
        "probe_query": torch.randn(PROMPTS, LAYERS, WIDTH, generator=g),
    }
    return inputs, evidence


def evidence_scale(model: Allocator, inputs, evidence) -> float:
    cfg = model.config
    with torch.no_grad():
        out = model.eval()(**inputs)
    scales = mean_scale(out.alpha, out.beta, scale_min=cfg.scale_min, scale_max=cfg.scale_max)
    return float(scales[torch.arange(PROMPTS), evidence].mean())


def train_toy() -> tuple[float, float]:
    """STEPS CAPO updates (no distillation) on fresh toy prompts each step, with the uniform
    allocation's reward as the group's reference: the evidence scale on held-out prompts before
    and after."""
    torch.manual_seed(0)
    model = Allocator(probe_config())
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    held_out = toy_batch(torch.Generator().manual_seed(99))
    optimizer = torch.optim.AdamW(trainer.parameter_groups(model, 0.1), lr=1e-2)
    before = evidence_scale(model, *held_out)
    for _ in range(STEPS):
        inputs, evidence = toy_batch(g)
        with torch.no_grad():
            out = model.eval()(**inputs)
        alpha = out.alpha[:, None].expand(PROMPTS, ROLLOUTS, CHUNKS)  # (B, M, K)
        beta = out.beta[:, None].expand(PROMPTS, ROLLOUTS, CHUNKS)
        actions, scales, _ = sample(
            alpha, beta, g, scale_min=cfg.scale_min, scale_max=cfg.scale_max
        )  # (B, M, K)
        advantages = torch.zeros(PROMPTS, ROLLOUTS, CHUNKS)
        uniform = torch.tensor(float(cfg.init_mean_scale > PAY_SCALE))  # the reference's reward
        for i in range(PROMPTS):
            acc = (scales[i, :, evidence[i]] > PAY_SCALE).float()  # (M,)
            cost = scale_cost(scales[i], cfg.scale_min, cfg.scale_max)
            advantages[i] = capo_advantages(acc, cost, reference=uniform)[:, None]
        old = log_prob(alpha, beta, actions)
        update(model, optimizer, inputs, actions, old, advantages)
    return before, evidence_scale(model, *held_out)


def test_capo_alone_learns_to_read_the_one_layer_head():
    before, after = train_toy()
    assert before == pytest.approx(0.6, abs=1e-4) and after > RISE, (before, after)


def test_a_flipped_policy_gradient_sign_lowers_the_evidence_scale(monkeypatch):
    right = trainer.group_ppo_clip_loss
    monkeypatch.setattr(trainer, "group_ppo_clip_loss", lambda *a: -right(*a))
    before, after = train_toy()
    assert after < before, (before, after)


# ------------------------------------------------------------------------------- invariants
def test_the_head_starts_uniform_and_rejects_wrong_feature_shapes():
    model = Allocator(probe_config())
    inputs, _ = toy_batch(torch.Generator().manual_seed(1))
    out = model.eval()(**inputs)
    assert torch.allclose(out.alpha, out.alpha[0, 0]) and torch.allclose(out.beta, out.beta[0, 0])
    inputs["probe_attention"] = inputs["probe_attention"][..., :-1]
    with pytest.raises(ValueError, match="probe_attention must be"):
        model(**inputs)


def test_reference_zscore_by_hand():
    # rewards 1, 1 with reference 0: pool mean 2/3, population std sqrt(2)/3
    z = reference_zscore(torch.tensor([1.0, 1.0]), torch.tensor(0.0))
    assert z.tolist() == pytest.approx([(1 / 3) / (2**0.5 / 3)] * 2, rel=1e-4)
    assert capo_advantages(torch.tensor([0.0, 0.0]), torch.tensor([0.2, 0.2]))[0] != pytest.approx(
        capo_advantages(
            torch.tensor([0.0, 0.0]), torch.tensor([0.2, 0.2]), reference=torch.tensor(1.0)
        )[0]
    )


def test_the_budget_is_a_ceiling_without_fill(backbone):
    geometry = backbone.geometry
    h, w = geometry.base_size(336, 336)
    low = np.full(8, 0.3)
    cap = 8 * geometry.tokens(h, w)  # the whole video at full size
    kept = fit_budget(low, geometry, h, w, cap, fill=False)
    filled = fit_budget(low, geometry, h, w, cap)
    spent = sum(geometry.tokens(*geometry.scaled_size(h, w, s)) for s in kept)
    assert spent < cap and filled.min() == 1.0 and kept.max() < 0.5


# ------------------------------------------------------------------------------- real probe
def test_probe_features_on_the_tiny_family(backbone, video):
    pipeline = Pipeline(backbone)
    sampled = pipeline.decode(video, Request(question="Which card?", num_frames=8))
    fpc = backbone.geometry.frames_per_chunk
    f = probe_features(backbone, sampled, "Which card?", fpc, probe_budget=0.25, num_layers=1)
    k = len(sampled.frames) // fpc
    text = backbone.model.config.text_config
    assert f.attention.shape == (k, 2 * text.num_attention_heads)
    assert torch.allclose(f.attention.sum(dim=0), torch.ones(f.attention.shape[1]), atol=1e-5)
    assert f.hidden.shape == (k, 1, text.hidden_size) and f.query.shape == (1, text.hidden_size)
    assert f.visual_tokens > 0


def test_learned_probe_head_reports_its_probe_and_refuses_a_shallower_pass(backbone, video):
    text = backbone.model.config.text_config
    cfg = probe_config(
        probe_layers=2, probe_heads=text.num_attention_heads, probe_hidden_size=text.hidden_size
    )
    policy = Learned(Allocator(cfg), backbone.tokenizer)
    pipeline = Pipeline(backbone, learned=policy)
    request = Request(question="Which card?", num_frames=8, policy="learned", budget=0.5)
    allocation = pipeline.allocate(pipeline.decode(video, request), request)
    assert allocation.probe is not None and allocation.probe.visual_tokens > 0
    assert sum(allocation.tokens) <= 0.5 * allocation.vanilla_tokens
    with pytest.raises(PolicyError, match="reads layer 2"):
        make_policy("learned", learned=policy, probe_layers=1)
    cache = FeatureCache()
    for _ in range(2):
        cache.get(("v", "q", 4), lambda: 1)
    assert cache.passes == 1


@pytest.mark.parametrize("chain", ["select", "prune", "select+prune"])
def test_a_probe_head_composes_with_every_operator(backbone, video, chain):
    """A combination takes its probe pass and its fill rule from the scorer's allocator."""
    text = backbone.model.config.text_config
    cfg = probe_config(
        probe_layers=2, probe_heads=text.num_attention_heads, probe_hidden_size=text.hidden_size
    )
    pipeline = Pipeline(backbone, learned=Learned(Allocator(cfg), backbone.tokenizer))
    name = f"learned+{chain}"
    request = Request(question="Which card?", num_frames=8, policy=name, budget=0.5)
    policy = pipeline.policy(request)
    assert policy.runs_probe and not policy.fills_budget  # the head's, not the class defaults
    allocation = pipeline.allocate(pipeline.decode(video, request), request)
    assert allocation.probe is not None and allocation.probe.visual_tokens > 0
    assert sum(allocation.tokens) <= 0.5 * allocation.vanilla_tokens


def test_a_probe_vlm_other_than_the_backbone_is_stamped_and_loaded(tmp_path, video):
    from resadapt import compat
    from resadapt.backbone import Backbone

    backbone = Backbone.load("tiny-random-qwen2.5-vl")
    probe_vlm = Backbone.load("tiny-random-qwen2.5-vl")  # a second checkpoint of the family
    text = probe_vlm.model.config.text_config
    cfg = probe_config(
        probe_layers=1, probe_heads=text.num_attention_heads, probe_hidden_size=text.hidden_size
    )
    cfg = compat.stamp(cfg, backbone, probe_vlm)
    assert cfg.probe_backbone == "tiny-random-qwen2.5-vl" and cfg.probe_weights_sha256
    assert cfg.backbone_model_type == "qwen2_5_vl"
    Allocator(cfg).save_pretrained(tmp_path)
    policy = Learned.load(tmp_path, backbone.tokenizer, backbone.model)
    assert policy.probe_model is not None and policy.probe_model is not backbone
    pipeline = Pipeline(backbone, learned=policy)
    request = Request(question="Which card?", num_frames=8, policy="learned", budget=0.5)
    allocation = pipeline.allocate(pipeline.decode(video, request), request)
    assert allocation.probe is not None and allocation.probe.visual_tokens > 0
    other = Learned(
        policy.allocator, backbone.tokenizer, probe_model=Backbone.load("tiny-random-qwen3-vl")
    )
    with pytest.raises(PolicyError, match="family"):
        Pipeline(backbone, learned=other).allocate(pipeline.decode(video, request), request)


def test_the_evaluator_and_the_app_load_a_saved_probe_head(tmp_path, backbone):
    from resadapt import compat
    from resadapt.pipeline import load_allocator

    text = backbone.model.config.text_config
    cfg = probe_config(
        probe_layers=1, probe_heads=text.num_attention_heads, probe_hidden_size=text.hidden_size
    )
    Allocator(compat.stamp(cfg, backbone)).save_pretrained(tmp_path)
    learned = load_allocator(str(tmp_path), backbone)
    assert learned.runs_probe and not learned.fills_budget and learned.warning is None


def test_the_model_card_says_what_each_kind_of_head_reads(tmp_path):
    """A probe head's card names the backbone's low-resolution pass, not thumbnails."""
    Allocator(probe_config()).save_pretrained(tmp_path / "probe")
    Allocator(AllocatorConfig()).save_pretrained(tmp_path / "conv")
    probe = (tmp_path / "probe" / "README.md").read_text()
    conv = (tmp_path / "conv" / "README.md").read_text()
    assert "reads the backbone's own low-resolution pass" in probe
    assert "thumbnails and the question" not in probe and "before the backbone sees" not in probe
    assert "pixel thumbnails and the question" in conv
    assert "before the backbone sees any pixel" in conv
    assert "trained by CAPO alone" in probe and "## What the head reads" not in conv
