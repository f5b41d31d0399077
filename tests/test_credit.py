"""Per-chunk credit (``capo_chunk``), per-chunk advantages in the loss, and the concentration cap,
checked against numbers computed by hand (arithmetic in the comments).

Designs use ±1 columns of a Hadamard matrix: mutually orthogonal, mean 0, population std 1, so
ZᵀZ = M·I and the ridge regression is ĉ_k = mean_m(r_m Z_{m,k}) / (1 + λ).
"""

from __future__ import annotations

import pytest
import torch

from resadapt.capo import (
    capo_advantages,
    chunk_advantages,
    chunk_credit,
    concentration_cap_loss,
    group_ppo_clip_loss,
    group_zscore,
    probe_advantages,
    probe_credit,
    standardize_actions,
    total_loss,
)

# Columns 1, 2, 4, 7 of the 8 × 8 Sylvester Hadamard matrix (column 0 is constant).
H = torch.tensor(
    [
        [1, 1, 1, 1],
        [-1, 1, 1, -1],
        [1, -1, 1, -1],
        [-1, -1, 1, 1],
        [1, 1, -1, -1],
        [-1, 1, -1, 1],
        [1, -1, -1, 1],
        [-1, -1, -1, -1],
    ],
    dtype=torch.float32,
)  # (M=8, K=4)
R = 0.5 / (0.5 + 1e-6)
"""z-score of a 0/1 reward split 4:4: mean 0.5, population std 0.5 → ±0.5 / (0.5 + 1e-6)."""


def close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    torch.testing.assert_close(
        actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=0, atol=atol
    )


def test_actions_are_standardised_per_chunk_and_constant_chunks_are_zero():
    actions = torch.tensor([[0.2, 0.5], [0.6, 0.5]])  # chunk 0: mean 0.4, std 0.2; chunk 1 fixed
    close(standardize_actions(actions), [[-1.0, 0.0], [1.0, 0.0]])


def test_only_the_chunk_that_predicts_the_reward_gets_credit():
    actions = 0.5 + 0.1 * H  # (8, 4): standardised, exactly H
    acc = (H[:, 3] + 1) / 2  # reward 1 exactly when chunk 3 drew high
    r = group_zscore(acc)  # = R · H[:, 3]
    # ĉ = Hᵀ r / (8 · (1 + 1)): chunks 0–2 are orthogonal to H[:, 3] → 0; chunk 3: 8R / 16 = R/2
    close(chunk_credit(r, standardize_actions(actions), ridge=1.0), [0, 0, 0, R / 2])
    shared = torch.linspace(-1, 1, 8)  # any A_m
    adv = chunk_advantages(shared, acc, actions, ridge=1.0)  # (8, 4)
    # chunk 3 keeps A_m (the others explain nothing); chunks 0–2 lose chunk 3's e_m = R/2 · H[m, 3]
    close(adv[:, 3], shared)
    for k in range(3):
        close(adv[:, k], shared - R / 2 * H[:, 3])


def test_a_larger_ridge_shrinks_the_credit():
    r = R * H[:, 0]
    close(chunk_credit(r, H, ridge=3.0), [R / 4, 0, 0, 0])  # 8R / (8 · 4)


def test_constant_reward_gives_zero_credit_and_the_shared_advantage():
    actions = 0.5 + 0.1 * H
    acc = torch.full((8,), 0.7)
    close(chunk_credit(group_zscore(acc), H), [0, 0, 0, 0])
    cost = torch.linspace(0.1, 0.8, 8)
    shared = capo_advantages(acc, cost)  # cost shaping only
    close(chunk_advantages(shared, acc, actions), shared[:, None].expand(8, 4))


def test_collinear_chunks_share_the_credit_through_the_ridge():
    # M = 2, K = 2, chunk 1 mirrors chunk 0: Z = [[−1, 1], [1, −1]], r = [−R, R].
    # ZᵀZ + 1·2·I = [[4, −2], [−2, 4]], Zᵀr = [2R, −2R] → ĉ = [x, −x] with 6x = 2R, x = R/3.
    actions = torch.tensor([[0.2, 0.6], [0.6, 0.2]])
    acc = torch.tensor([0.0, 1.0])
    x = R / 3
    close(chunk_credit(group_zscore(acc), standardize_actions(actions)), [x, -x])
    # e = Z · ĉ = [[−x, −x], [x, x]]; chunk 0 loses chunk 1's e and vice versa
    shared = torch.tensor([-1.0, 1.0])
    close(chunk_advantages(shared, acc, actions), [[-1 + x, -1 + x], [1 - x, 1 - x]])


def test_credit_weight_scales_what_is_taken_out():
    actions, acc = 0.5 + 0.1 * H, (H[:, 3] + 1) / 2
    shared = torch.zeros(8)
    adv = chunk_advantages(shared, acc, actions, ridge=1.0, weight=2.0)
    close(adv[:, 0], -R * H[:, 3])  # 2 · R/2


def test_bad_credit_inputs_are_refused():
    with pytest.raises(ValueError, match="ridge=0"):
        chunk_credit(torch.zeros(2), torch.zeros(2, 3), ridge=0.0)
    with pytest.raises(ValueError, match=r"got \(3, 4\)"):
        chunk_advantages(torch.zeros(2), torch.zeros(2), torch.zeros(3, 4))


# --- the loss with per-chunk advantages ---------------------------------------------------------


def test_group_loss_takes_per_chunk_advantages():
    # ratio 1 → loss = −mean of the valid chunks' advantages; chunk 1 is padding
    logp = torch.zeros(1, 2, 2)  # (B, M, K)
    adv = torch.tensor([[[1.0, 5.0], [3.0, 7.0]]])  # (B, M, K)
    mask = torch.tensor([[True, False]])  # (B, K)
    close(group_ppo_clip_loss(logp, logp, adv, mask), -(1.0 + 3.0) / 2)
    # shared advantages expanded to every chunk give the same loss as (B, M)
    shared = torch.tensor([[1.0, 3.0]])
    close(
        group_ppo_clip_loss(logp, logp, shared[..., None].expand(1, 2, 2), mask),
        group_ppo_clip_loss(logp, logp, shared, mask),
    )


def test_per_chunk_advantages_push_each_chunk_its_own_way():
    alpha = torch.tensor([[2.0, 2.0]], requires_grad=True)  # (B=1, K=2)
    beta = torch.tensor([[2.0, 2.0]])
    actions = torch.full((1, 1, 2), 0.8)  # (B, M=1, K): both chunks drew high
    dist = torch.distributions.Beta(alpha[:, None], beta[:, None])
    new = dist.log_prob(actions)  # (1, 1, 2)
    adv = torch.tensor([[[1.0, -1.0]]])  # chunk 0 rewarded, chunk 1 punished
    group_ppo_clip_loss(new, new.detach(), adv, torch.ones(1, 2, dtype=torch.bool)).backward()
    # d log Beta(0.8 | α, 2) / dα = log 0.8 − ψ(α) + ψ(α + 2) > 0: descent raises α0, lowers α1
    assert alpha.grad[0, 0] < 0 < alpha.grad[0, 1]


# --- the concentration cap ----------------------------------------------------------------------


def test_concentration_cap_is_a_hinge_above_the_cap():
    alpha = torch.tensor([[2.0, 30.0, 40.0, 1.0]])
    beta = torch.tensor([[1.0, 10.0, 20.0, 99.0]])  # α + β = 3, 40, 60, 100 (padding)
    mask = torch.tensor([[True, True, True, False]])
    close(concentration_cap_loss(alpha, beta, mask, 50.0), (0 + 0 + 10) / 3)
    close(concentration_cap_loss(alpha, beta, mask, 100.0), 0.0)
    one = torch.tensor(1.0)
    kw = dict(sim_weight=0.0, con_weight=0.0, attention_weight=0.0)
    close(total_loss(one, one, one, one, **kw, cap=torch.tensor(2.0), cap_weight=0.1), 1.2)
    close(total_loss(one, one, one, one, **kw), 1.0)


# ------------------------------------------------------------------------------------ probe credit
def test_probe_credit_is_each_probe_against_the_mean_in_units_of_their_spread():
    # q = (0, 0, 0, 1): mean 0.25, population std √(3·0.0625 + 0.5625)/2 = √0.75/2 = 0.4330
    d = probe_credit(torch.tensor([0.0, 0.0, 0.0, 1.0]))
    close(d, torch.tensor([-1.0, -1.0, -1.0, 3.0]) / 3**0.5)  # (q − 0.25) / 0.4330
    close(d.sum(), 0.0)  # a reallocation
    close(probe_credit(torch.full((4,), 0.6)), [0, 0, 0, 0])  # every probe alike: no credit
    # barely different probes: std 0.005 is floored at 0.05, so d = (q − mean) / 0.05
    close(probe_credit(torch.tensor([0.50, 0.51, 0.50, 0.51])), [-0.1, 0.1, -0.1, 0.1])


def test_only_the_probed_evidence_chunk_is_pushed_up_even_when_the_group_is_flat():
    actions = 0.5 + 0.1 * H  # (8, 4): centred actions 0.1 · H
    u = 0.1 * 12**0.5  # (a − ā) / σ_U = 0.1 · √12 · H
    flat = torch.zeros(8)  # every allocation failed alike: A_m = 0, the group says nothing
    q = torch.tensor([0.0, 0.0, 0.0, 1.0])  # d = (−1, −1, −1, 3) / √3
    adv = probe_advantages(flat, actions, q, weight=2.0)
    r3 = 3**0.5
    # A_{m,k} = 0 + 2 · d_k · u · H_{m,k}
    close(adv, torch.cat([-2 / r3 * u * H[:, :3], 6 / r3 * u * H[:, 3:]], dim=1))
    # E over the group of A_{m,k} · H_{m,k}: positive on chunk 3 (its scale goes up) only
    close((adv * H).mean(dim=0), [-2 / r3 * u, -2 / r3 * u, -2 / r3 * u, 6 / r3 * u])


def test_probe_credit_adds_to_per_chunk_advantages():
    actions = 0.5 + 0.1 * H
    per_chunk = torch.arange(32, dtype=torch.float32).view(8, 4)
    probes = torch.tensor([1.0, 0.0, 0.0, 0.0])  # d = (3, −1, −1, −1) / √3
    adv = probe_advantages(per_chunk, actions, probes, weight=1.0)
    expected = 0.1 * 12**0.5 * H * torch.tensor([3.0, -1.0, -1.0, -1.0]) / 3**0.5
    close(adv - per_chunk, expected)
    shared = torch.ones(8)
    close(probe_advantages(shared, actions, probes, weight=0.0), torch.ones(8, 4))


def test_bad_probe_inputs_are_refused():
    actions = 0.5 + 0.1 * H
    with pytest.raises(ValueError, match="probe rewards"):
        probe_advantages(torch.zeros(8), actions, torch.zeros(3), weight=1.0)
    with pytest.raises(ValueError, match="probe rewards"):
        probe_credit(torch.zeros(0))
