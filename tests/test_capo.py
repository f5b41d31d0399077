"""CAPO objective, checked against numbers computed by hand (arithmetic in the comments).

Reading aid: σ(4/3) = 0.7913915, σ(−1/3) = 0.4174298, σ(2) = 0.8807971, σ(3.75) = 0.9770226.
Defaults: α_p = 0.5, τ_fix = 0.4, T = 0.15, threshold 0.35, right 0.7, wrong 1.3, encourage 0.25,
gas 0.05, floor 0.001; the group std is the population std.
"""

from __future__ import annotations

import math

import pytest
import torch

from resadapt.capo import (
    asymmetric_shaping,
    capo_advantages,
    concentration_loss,
    cost_pivot,
    efficiency_signal,
    group_ppo_clip_loss,
    group_zscore,
    ppo_clip_loss,
    scale_cost,
    similarity_loss,
    token_cost,
    total_loss,
)


def close(actual: torch.Tensor, expected: list[float] | float, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=0, atol=atol)


# --- advantages ---------------------------------------------------------------------------------


def test_constant_accuracy_group_has_zero_base_advantage():
    close(group_zscore(torch.tensor([0.5, 0.5, 0.5])), [0.0, 0.0, 0.0])
    # std = 5e-6 < 1e-4: treated as no signal
    close(group_zscore(torch.tensor([0.5, 0.50001])), [0.0, 0.0])
    close(
        capo_advantages(torch.tensor([0.7, 0.7]), torch.tensor([0.3, 0.3]), mode="none"), [0.0, 0.0]
    )


def test_zscore_uses_population_std():
    # acc = [1, 0]: mean 0.5, population std 0.5 → ±0.5 / (0.5 + 1e-6) = ±0.999998
    close(group_zscore(torch.tensor([1.0, 0.0])), [0.999998, -0.999998])


def test_all_wrong_group_gives_the_costlier_allocation_the_larger_advantage():
    acc, cost = torch.tensor([0.0, 0.0]), torch.tensor([0.2, 0.6])
    # base = 0 (constant acc). τ = 0.5·mean(0.2, 0.6) + 0.5·0.4 = 0.4
    close(cost_pivot(cost), 0.4)
    # R_small = σ((0.4 − 0.2)/0.15) − ½ = σ(4/3) − ½ = +0.2913915; for c = 0.6: −0.2913915
    r_small = efficiency_signal(cost, cost_pivot(cost))
    close(r_small, [0.2913915, -0.2913915])
    # wrong: w⁻ = 1 − 0 = 1; Shape = 1.3 · 1 · R_big = 1.3 · (−R_small) = ∓0.3788089
    close(asymmetric_shaping(acc, r_small), [-0.3788089, 0.3788089])
    # A = 0 + 0.25 · Shape − 0.05 · c: −0.0947022 − 0.01 = −0.1047022; 0.0947022 − 0.03 = 0.0647022
    adv = capo_advantages(acc, cost)
    close(adv, [-0.1047022, 0.0647022])
    assert adv[1] > adv[0]


def test_all_correct_group_favours_the_cheaper_allocation_and_floor_holds():
    acc, cost = torch.tensor([1.0, 1.0]), torch.tensor([0.2, 0.6])
    # τ = 0.4, R_small = ±0.2913915 (as above); correct: w⁺ = max(1^0.5, 0.05) = 1
    # Shape = 0.7 · 1 · R_small = ±0.2039741
    # A = 0 + 0.25 · 0.2039741 − 0.05 · 0.2 = 0.0409935
    # A = 0 − 0.0509935 − 0.03 = −0.0809935 → correct, so floored to 0.001
    close(capo_advantages(acc, cost), [0.0409935, 0.001])


def test_mixed_group_with_equal_costs():
    # acc = [1, 0]: z = ±0.999998. τ = 0.5·0.5 + 0.2 = 0.45
    # R_small = σ((0.45 − 0.5)/0.15) − ½ = σ(−1/3) − ½ = −0.0825702
    # m=0 correct: Shape = 0.7 · 1 · (−0.0825702) = −0.0577991
    #   A = 0.999998 − 0.0144498 − 0.025 = 0.9605482
    # m=1 wrong:   Shape = 1.3 · (1 − 0) · (+0.0825702) = 0.1073413
    #   A = −0.999998 + 0.0268353 − 0.025 = −0.9981627
    close(
        capo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])), [0.9605482, -0.9981627]
    )


def test_fractional_accuracies_weight_the_shaping():
    # acc = [0.64, 0.04]: mean 0.34, population std 0.3 → z = ±0.3/0.300001 = ±0.9999967
    # cost = [0.1, 0.7]: τ = 0.5·0.4 + 0.2 = 0.4; R_small = σ(±2) − ½ = ±0.3807971
    # m=0 correct (0.64 > 0.35): w⁺ = √0.64 = 0.8; Shape = 0.7·0.8·0.3807971 = 0.2132464
    #   A = 0.9999967 + 0.0533116 − 0.005 = 1.0483083
    # m=1 wrong: w⁻ = 0.96; Shape = 1.3·0.96·0.3807971 = 0.4752348
    #   A = −0.9999967 + 0.1188087 − 0.035 = −0.916188
    adv = capo_advantages(torch.tensor([0.64, 0.04]), torch.tensor([0.1, 0.7]))
    close(adv, [1.0483083, -0.916188])


def test_accuracy_floor_of_the_right_weight():
    # With the threshold lowered below 0, acc = 0 counts as correct: w⁺ = max(0^0.5, 0.05) = 0.05
    # Shape = 0.7 · 0.05 · 0.2 = 0.007
    shape = asymmetric_shaping(torch.tensor([0.0]), torch.tensor([0.2]), correct_threshold=-1.0)
    close(shape, [0.007])


def test_direct_and_none_modes():
    acc, cost = torch.tensor([1.0, 0.0]), torch.tensor([0.2, 0.6])
    # direct: z − 0.5 c = 0.999998 − 0.1 = 0.899998; −0.999998 − 0.3 = −1.299998
    close(capo_advantages(acc, cost, mode="direct"), [0.899998, -1.299998])
    close(capo_advantages(acc, cost, mode="direct", direct_weight=0.0), [0.999998, -0.999998])
    # none: z only, the cost is ignored
    close(capo_advantages(acc, cost, mode="none"), [0.999998, -0.999998])
    close(capo_advantages(acc, torch.tensor([0.9, 0.1]), mode="none"), [0.999998, -0.999998])


def test_pivot_uses_the_detached_group_mean():
    acc, cost = torch.tensor([0.0, 0.0]), torch.tensor([0.2, 0.6])
    jac = torch.autograd.functional.jacobian(lambda c: capo_advantages(acc, c), cost)
    # Off-diagonal: c_j moves the pivot only through the detached mean → exactly 0.
    # Diagonal: dA/dc = 0.25 · 1.3 · σ'(x)/T − 0.05 with σ'(±4/3) = 0.7913915 · 0.2086085
    #   = 0.1650910 → 0.325 · 0.1650910 / 0.15 − 0.05 = 0.3076972
    close(jac, [[0.3076972, 0.0], [0.0, 0.3076972]])


def test_bad_groups_are_refused():
    with pytest.raises(ValueError, match="choose one of"):
        capo_advantages(torch.tensor([1.0]), torch.tensor([0.5]), mode="grpo")
    with pytest.raises(ValueError, match=r"\(M,\)"):
        capo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0.5]))


def test_single_allocation_group_is_finite():
    # M = 1: population std 0 → base 0; τ = 0.5·0.5 + 0.2 = 0.45, R_small = −0.0825702
    # correct: A = 0.25 · 0.7 · (−0.0825702) − 0.025 = −0.0394498 → floored to 0.001
    close(capo_advantages(torch.tensor([1.0]), torch.tensor([0.5])), [0.001])


# --- costs --------------------------------------------------------------------------------------


def test_token_cost_is_the_fraction_of_vanilla_tokens():
    close(token_cost(torch.tensor([300, 150]), 600), [0.5, 0.25])
    with pytest.raises(ValueError, match="positive"):
        token_cost(torch.tensor([1]), 0)


def test_scale_cost_is_the_normalised_mean_scale():
    scales = torch.tensor([[1.0, 1.0], [0.2, 0.6]])
    # means 1.0 and 0.4 → (1.0 − 0.2)/0.8 = 1.0; (0.4 − 0.2)/0.8 = 0.25
    close(scale_cost(scales, 0.2, 1.0), [1.0, 0.25])
    # a padding chunk (scale 0.2) is left out of the mean: row 0 stays 1.0
    mask = torch.tensor([[True, False], [True, True]])
    close(scale_cost(torch.tensor([[1.0, 0.2], [0.2, 0.6]]), 0.2, 1.0, mask), [1.0, 0.25])


# --- policy loss --------------------------------------------------------------------------------


def test_ppo_loss_at_ratio_one_is_minus_mean_advantage_over_valid_chunks():
    old = torch.tensor([[0.3, -1.2, 0.7], [0.1, 0.0, 0.0]])
    new = old.clone()
    new[1, 1:] = 50.0  # padding chunks with garbage log-densities
    adv = torch.tensor([1.5, -0.5])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    # chunks: −1.5 × 3 and +0.5 × 1 → (−4.5 + 0.5) / 4 = −1.0
    close(ppo_clip_loss(new, old, adv, mask), -1.0)


@pytest.mark.parametrize(
    ("ratio", "advantage", "expected"),
    [
        (1.5, 1.0, -1.28),  # max(−1.5, −1.28): clipped at 1 + 0.28
        (0.5, -1.0, 0.8),  # max(0.5, 0.8): clipped at 1 − 0.2
        (0.5, 1.0, -0.5),  # max(−0.5, −0.8): pessimistic side, not clipped
        (1.1, -2.0, 2.2),  # inside the trust region: −A ρ = 2.2
        (math.exp(5), -1.0, 10.0),  # max(148.4, 1.28) = 148.4 → dual clip min(·, 10) = 10
        (math.exp(5), -2.0, 20.0),  # dual clip caps at −A · 10 = 20
    ],
)
def test_ppo_clipping(ratio, advantage, expected):
    old = torch.zeros(1, 1)
    new = torch.full((1, 1), math.log(ratio))
    close(
        ppo_clip_loss(new, old, torch.tensor([advantage]), torch.ones(1, 1, dtype=torch.bool)),
        expected,
        atol=1e-5,
    )


def test_clipped_chunks_get_no_gradient_and_huge_log_ratios_stay_finite():
    new = torch.tensor([[math.log(1.5)]], requires_grad=True)
    ppo_clip_loss(
        new, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1, dtype=torch.bool)
    ).backward()
    close(new.grad, [[0.0]])
    # log-ratio 200 is clamped to 20: with A = 0 the loss is 0, not NaN (0 · inf)
    loss = ppo_clip_loss(
        torch.full((1, 2), 200.0),
        torch.zeros(1, 2),
        torch.tensor([0.0]),
        torch.ones(1, 2, dtype=torch.bool),
    )
    close(loss, 0.0)


def test_group_loss_shares_each_prompts_chunk_mask_among_its_allocations():
    # B = 2 prompts, M = 2 allocations, K = 2 chunks; prompt 1's second chunk is padding.
    old = torch.zeros(2, 2, 2)
    new = torch.full((2, 2, 2), 50.0)  # log-ratio clamped to 20: only the advantage sign matters
    new[0] = 0.0  # prompt 0 at ratio 1: loss −A per chunk
    adv = torch.tensor([[1.0, -1.0], [-2.0, 3.0]])
    mask = torch.tensor([[True, True], [True, False]])
    # prompt 0: −1, −1, +1, +1; prompt 1 (ρ = e^20): A = −2 → dual clip 20; A = 3 → clip −3·1.28
    # valid chunks 4 + 2 → (0 + 20 − 3.84) / 6 = 2.6933333
    close(group_ppo_clip_loss(new, old, adv, mask), 2.6933333, atol=1e-5)
    flat = ppo_clip_loss(
        new.reshape(4, 2), old.reshape(4, 2), adv.reshape(4), mask.repeat_interleave(2, 0)
    )
    close(group_ppo_clip_loss(new, old, adv, mask), float(flat))


def test_total_loss_weights_each_term():
    # 1 + 0.5 · 2 + 0.25 · 4 + 2 · 0.5 = 4
    terms = [torch.tensor(v) for v in (1.0, 2.0, 4.0, 0.5)]
    close(total_loss(*terms, sim_weight=0.5, con_weight=0.25, attention_weight=2.0), 4.0)
    close(total_loss(*terms, sim_weight=0.0, con_weight=0.0, attention_weight=0.0), 1.0)


# --- regularisers -------------------------------------------------------------------------------


def test_similarity_loss_between_identical_features():
    features = torch.ones(1, 3, 4)  # identical neighbours: u = 1, w = σ(0.45/0.12) = 0.9770226
    mask = torch.ones(1, 3, dtype=torch.bool)
    # decreasing 1.0 → 0.5 → 0.25: ŝ steps of −0.6931472; ReLU(−0.6931 + 0.05·0.977) = 0
    close(similarity_loss(features, torch.tensor([[1.0, 0.5, 0.25]]), mask), 0.0)
    # increasing 0.5 → 1.0: w · ReLU(0.6931472 + 0.0488511) = 0.9770226 · 0.7419983 = 0.7249491
    two = torch.ones(1, 2, dtype=torch.bool)
    close(similarity_loss(features[:, :2], torch.tensor([[0.5, 1.0]]), two), 0.7249491)
    # equal scales still pay the margin: 0.9770226 · 0.05 · 0.9770226 = 0.0477287
    close(similarity_loss(features[:, :2], torch.tensor([[0.6, 0.6]]), two), 0.0477287)


def test_similarity_loss_is_small_for_dissimilar_features_and_ignores_padding():
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    mask = torch.tensor([[True, True, False]])  # the third chunk is padding
    # orthogonal: u = 0, w = σ(−0.55/0.12) = 0.0101174
    # 0.0101174 · ReLU(0.6931472 + 0.05 · 0.0101174) = 0.0101174 · 0.6936531 = 0.0070179
    loss = similarity_loss(features, torch.tensor([[0.5, 1.0, 0.2]]), mask)
    close(loss, 0.0070179)


def test_similarity_loss_pushes_scales_not_features():
    features = torch.ones(1, 2, 4, requires_grad=True)
    scales = torch.tensor([[0.5, 1.0]], requires_grad=True)
    similarity_loss(features, scales, torch.ones(1, 2, dtype=torch.bool)).backward()
    assert features.grad is None
    assert scales.grad[0, 1] > 0 > scales.grad[0, 0]


def test_concentration_loss_is_the_mean_of_alpha_plus_beta():
    alpha = torch.tensor([[2.0, 3.0], [4.0, 9.0]])
    beta = torch.tensor([[1.0, 4.0], [1.0, 9.0]])
    mask = torch.tensor([[True, True], [True, False]])
    # (2+1) + (3+4) + (4+1) = 15 over 3 valid chunks = 5
    close(concentration_loss(alpha, beta, mask), 5.0)
