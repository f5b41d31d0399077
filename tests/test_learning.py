"""The trainer's update learns: a seconds-long bandit on a toy reward, on the real allocator.

The reward pays only when chunk ``TARGET`` is drawn at a high scale. Everything but the reward is
the trainer's own path: the real :class:`Allocator`, exact per-chunk Beta draws
(``allocator.sample``), the advantages of :mod:`resadapt.capo` as :func:`collect_rollouts` computes
them (``capo_advantages``, then ``chunk_advantages`` for capo_chunk, ``probe_advantages`` with
probe credit: the probe of the target chunk is the only one the reward pays), the terms of
:func:`resadapt.trainer.policy_terms`, ``total_loss`` with CAPO's weights, AdamW and the gradient
clip. The policy's Beta-mean scale on the target chunk must rise past ``RISE``; with the sign of
the policy-gradient term flipped (the loss function the trainer calls is replaced by its negative)
it must fall instead, so a sign error in the loss fails this test.
"""

from __future__ import annotations

import pytest
import torch

import resadapt.trainer as trainer
from allocator import Allocator, AllocatorConfig, log_prob, mean_scale, sample
from resadapt.capo import (
    CONCENTRATION_WEIGHT,
    PER_CHUNK_MODES,
    SIMILARITY_WEIGHT,
    capo_advantages,
    chunk_advantages,
    probe_advantages,
    scale_cost,
    total_loss,
)

PROMPTS, CHUNKS, ROLLOUTS = 4, 4, 8  # B, K, M
TARGET = 2
"""The chunk whose scale the toy reward pays for."""
PAY_SCALE = 0.6
"""The reward is 1 when the target chunk's sampled scale exceeds this, else 0."""
RISE = 0.8
"""Pass mark: the policy's mean target scale after training (it starts at init_mean_scale 0.6)."""
STEPS = 20
MODES = ["capo", "capo_chunk", "direct", "capo_chunk+probe"]
SMALL = dict(hidden_dim=32, num_layers=1, num_heads=2, vocab_size=64, query_embed_dim=8)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_inputs(cfg: AllocatorConfig) -> dict[str, torch.Tensor]:
    """B random videos of K chunks with one question each."""
    g = torch.Generator().manual_seed(0)
    f, s = cfg.frames_per_chunk, cfg.thumb_side
    return {
        "thumbs": torch.rand(PROMPTS, CHUNKS, f, 3, s, s, generator=g),  # (B, K, F, 3, S, S)
        "query_ids": torch.randint(1, cfg.vocab_size, (PROMPTS, 5), generator=g),  # (B, L)
        "query_mask": torch.ones(PROMPTS, 5, dtype=torch.bool),  # (B, L)
        "chunk_mask": torch.ones(PROMPTS, CHUNKS, dtype=torch.bool),  # (B, K)
        "chunk_times": torch.arange(CHUNKS, dtype=torch.float32).expand(PROMPTS, CHUNKS),  # (B, K)
    }


def target_scale(model: Allocator, inputs: dict[str, torch.Tensor]) -> float:
    """Mean over the prompts of the Beta-mean scale of chunk TARGET (the deterministic policy)."""
    cfg = model.config
    with torch.no_grad():
        out = model.eval()(**inputs)
    scales = mean_scale(out.alpha, out.beta, scale_min=cfg.scale_min, scale_max=cfg.scale_max)
    return float(scales[:, TARGET].mean())


def train_toy(mode: str) -> tuple[float, float]:
    """STEPS bandit updates on the toy reward: (target scale before, after).

    ``mode`` is an advantage mode, with ``+probe`` for probe credit (``--probe-credit 1``).
    """
    mode, probes = mode.removesuffix("+probe"), mode.endswith("+probe")
    torch.manual_seed(0)
    model = Allocator(AllocatorConfig(thumb_side=32, **SMALL))
    cfg = model.config
    inputs = toy_inputs(cfg)
    optimizer = torch.optim.AdamW(trainer.parameter_groups(model, 0.1), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    before = target_scale(model, inputs)
    for _ in range(STEPS):
        with torch.no_grad():  # rollouts, as collect_rollouts: eval mode, one Beta per chunk
            out = model.eval()(**inputs)
        alpha = out.alpha[:, None].expand(PROMPTS, ROLLOUTS, CHUNKS)  # (B, M, K)
        beta = out.beta[:, None].expand(PROMPTS, ROLLOUTS, CHUNKS)  # (B, M, K)
        actions, scales, _ = sample(
            alpha, beta, generator, scale_min=cfg.scale_min, scale_max=cfg.scale_max
        )  # (B, M, K) each
        advantages = torch.zeros(PROMPTS, ROLLOUTS, CHUNKS)  # (B, M, K)
        for i in range(PROMPTS):
            acc = (scales[i, :, TARGET] > PAY_SCALE).float()  # (M,)
            cost = scale_cost(scales[i], cfg.scale_min, cfg.scale_max)  # (M,)
            adv = capo_advantages(acc, cost, mode=mode)  # (M,)
            if mode in PER_CHUNK_MODES:
                advantages[i] = chunk_advantages(adv, acc, actions[i])
            else:
                advantages[i] = adv[:, None]
            if probes:  # probe k: chunk k at s_max, the rest at s_min; only the target's pays
                paid = torch.tensor([float(k == TARGET) for k in range(CHUNKS)])  # (K,)
                advantages[i] = probe_advantages(advantages[i], actions[i], paid, weight=1.0)
        old = log_prob(alpha, beta, actions)  # (B, M, K)
        update(model, optimizer, inputs, actions, old, advantages)
    return before, target_scale(model, inputs)


def update(model, optimizer, inputs, actions, old, advantages) -> None:
    """One clipped update on stored actions, as the trainer's: its policy terms, CAPO's weights
    (no distillation), the gradient clip, AdamW."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    out = model(**inputs)
    pg, sim, con = trainer.policy_terms(
        out, actions, old, advantages, inputs["chunk_mask"], model.config
    )
    loss = total_loss(
        pg,
        sim,
        con,
        pg.new_zeros(()),
        sim_weight=SIMILARITY_WEIGHT,
        con_weight=CONCENTRATION_WEIGHT,
        attention_weight=0.0,
    )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


@pytest.mark.parametrize("mode", MODES)
def test_the_update_raises_the_scale_the_reward_pays_for(mode):
    before, after = train_toy(mode)
    assert before < 0.65 and after > RISE, (mode, before, after)


@pytest.mark.parametrize("mode", MODES)
def test_a_flipped_policy_gradient_sign_fails_to_learn(mode, monkeypatch):
    """The same run with the trainer's clipped loss negated: the target scale falls."""
    right = trainer.group_ppo_clip_loss
    monkeypatch.setattr(trainer, "group_ppo_clip_loss", lambda *a: -right(*a))
    before, after = train_toy(mode)
    assert after < before < RISE, (mode, before, after)
