"""CAPO, the allocator's training objective: cost-aware advantages, clipped loss, regularisers.

Owns the arithmetic of docs/capo.md as small pure tensor functions with named steps, and the
weighted sum that is the trainer's loss. Knows nothing about models, videos, backbones, graders or
processes: it sees accuracies, costs, log-densities, scales and features.

Shape legend: B prompts, M allocations in one prompt group, N allocations in a batch, K chunks,
D features.

Decisions the paper leaves open (docs/capo.md states them too):
  * ``group_zscore`` uses the population std (``unbiased=False``). trl and verl use torch's default
    unbiased std, which is larger by sqrt(M / (M - 1)) (1.07 at M = 8); the population std is
    defined for M = 1 and gives z-scores of unit variance within the group.
  * ``similarity_loss`` detaches the neighbour weights w: the loss pushes scales, not features
    (otherwise the policy could lower the loss by making neighbouring features look different).

Per-chunk credit (ours, ``mode="capo_chunk"``; docs/capo.md step 7 gives every chunk the same A_m).
One reward per allocation says that it worked, not which chunk mattered; the M allocations of a
group differ in every chunk at once, so the group itself can say which chunk's draw went with the
reward. With the group's standardised accuracy r = z(Acc) (M,) and standardised actions
Z_{m,k} = (a_{m,k} − mean_m a_{·,k}) / std_m a_{·,k} (M, K) (a column is 0 where its std < 1e-4):
  1. credit, a ridge regression of r on the chunks' actions: ĉ = (ZᵀZ + λ·M·I)⁻¹ Zᵀ r  (K,);
     ĉ = 0 for a constant reward; for an orthogonal design (ZᵀZ = M·I) ĉ_k = corr(r, a_k)/(1 + λ);
  2. what chunk j's draw explains of allocation m's reward: e_{m,j} = ĉ_j Z_{m,j}  (M, K);
  3. A_{m,k} = A_m − β · Σ_{j≠k} e_{m,j}, with A_m the shared CAPO advantage (steps 1–6).
Why step 3 is principled: the chunks of one allocation are drawn independently, so Σ_{j≠k} e_{m,j}
depends only on the other chunks' draws and is a baseline for chunk k (a factorised
action-dependent baseline, Wu et al., ICLR 2018): it leaves E[A ∇log π(a_k)] unchanged (up to the
O(1/M) bias of fitting ĉ on the group itself, as for the group mean) and removes the variance that
the other chunks' draws put into chunk k's signal. Chunk k keeps its own explained part
e_{m,k}, the unexplained residual and the whole cost shaping (the cost is a sum over all chunks,
so it stays shared). The ridge (λ > 0) keeps the fitted part a shrinkage, ‖Zĉ‖ ≤ ‖r‖, so it
never amplifies noise when K ≥ M; β = 1 subtracts the fitted baseline in full.

Probe credit (ours, ``--probe-credit w``, with any mode). The regression above is a baseline: it
removes variance but adds no signal, so when the M draws of a group never find the evidence the
group says nothing. Probes ask the backbone directly, at K extra rows per prompt: probe k shows
chunk k at s_max and every other chunk at s_min (fitted to the budget like any allocation), and is
scored by the gold answer's probability, q_k ∈ [0, 1]:
  1. probe credit, how much better the answer is when chunk k is the one seen in full, in units
     of the probes' spread: d_k = (q_k − mean_j q_j) / max(std_j q_j, σ_q)  (K,), σ_q = 0.05 a
     floor so that probes which barely differ give little credit; Σ_k d_k = 0 (a reallocation:
     what one chunk gains the others give up), and d = 0 when all probes score the same.
     The alternatives tried (the plain centred d = q − mean q; the margin
     d_k = q_k − max_{j≠k} q_j) and what they did: docs/results.md, "Probe credit";
  2. A_{m,k} = A_m + w · d_k · (a_{m,k} − mean_m a_{·,k}) / σ_U  (M, K), σ_U = 1/√12 the std of
     a uniform action (A_m may already be per chunk).
The centred action is independent of the other chunks' draws, so the added term is a
score-function estimate of ∇ Σ_k (w/σ_U)·d_k·E[a_k]: it pushes chunk k's mean scale up in
proportion to its probe credit, the reward's finite difference along chunk k, whatever the group's
own rewards were. The action is centred, not standardised: the standardised Z would estimate
∇ E[a_k]/σ_k, whose step grows without bound as the Beta sharpens. The probes are the backbone's
answers, not its attention: still reward only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ZSCORE_EPS = 1e-6
"""Added to the group std before dividing (docs/capo.md step 1)."""
ZSCORE_MIN_STD = 1e-4
"""Below this group std the accuracy term is 0: no accuracy signal in the group."""
MAX_LOG_RATIO = 20.0
"""|log π_new − log π_old| is clamped to this before exponentiating."""
CLIP_LOW, CLIP_HIGH = 0.2, 0.28
"""PPO clip range of the ratio: [1 − CLIP_LOW, 1 + CLIP_HIGH] (docs/capo.md)."""
DUAL_CLIP = 10.0
"""For negative advantages the per-chunk loss is capped at −A · DUAL_CLIP (docs/capo.md)."""
SIMILARITY_WEIGHT = 1e-3
"""Weight of ``similarity_loss`` in the total loss (docs/capo.md)."""
CONCENTRATION_WEIGHT = 5e-4
"""Weight of ``concentration_loss`` in the total loss (docs/capo.md)."""
ADVANTAGE_MODES = ("capo", "capo_chunk", "direct", "none")
"""capo: the full shaping; capo_chunk: capo plus per-chunk credit (``chunk_advantages``); direct:
z(acc) − λ·cost (ablation); none: z(acc), no cost (ablation)."""
PER_CHUNK_MODES = frozenset({"capo_chunk"})
"""Modes whose advantages differ between the chunks of one allocation."""
CREDIT_RIDGE = 1.0
"""λ of the per-chunk credit regression (halves the credit of an orthogonal design)."""
CREDIT_WEIGHT = 1.0
"""β: how much of the other chunks' explained reward is taken out of chunk k's advantage."""
UNIFORM_ACTION_STD = 12**-0.5
"""σ_U: the std of an action drawn from Beta(1, 1), the probe term's fixed action scale."""
PROBE_MIN_STD = 0.05
"""σ_q: floor of the probe rewards' std in ``probe_credit`` (reward units)."""
PROBE_CREDIT = 0.0
"""w of the probe credit (``probe_advantages``); 0: no probes."""
CONCENTRATION_CAP_WEIGHT = 0.1
"""Weight of ``concentration_cap_loss`` (α + β above ``max_concentration``) in the total loss."""


def group_zscore(
    values: torch.Tensor, *, eps: float = ZSCORE_EPS, min_std: float = ZSCORE_MIN_STD
) -> torch.Tensor:
    """Step 1: (x − mean) / (std + eps) over one group (M,) → (M,); zeros when std < min_std.

    std is the population std (see the module docstring).
    """
    std = values.std(unbiased=False)
    z = (values - values.mean()) / (std + eps)
    return torch.where(std < min_std, torch.zeros_like(z), z)


def reference_zscore(values: torch.Tensor, reference: torch.Tensor, **zscore) -> torch.Tensor:
    """Step 1 with a reference: the group's M rewards z-scored against the mean and std of the M
    rewards and the reference reward together (M + 1 values; :func:`group_zscore` on the pool,
    ``zscore`` its eps and min_std) → (M,). An allocation that scores below the reference (the
    uniform allocation at the same budget) is pushed down even when the whole group scores
    alike."""
    pool = torch.cat([values, reference.reshape(1).to(values.dtype)])  # (M + 1,)
    return group_zscore(pool, **zscore)[:-1]


def cost_pivot(
    cost: torch.Tensor, *, pivot_alpha: float = 0.5, pivot_fixed: float = 0.4
) -> torch.Tensor:
    """Step 2: τ = α_p · mean(c) + (1 − α_p) · τ_fix, with the group mean detached; (M,) → ()."""
    return pivot_alpha * cost.mean().detach() + (1 - pivot_alpha) * pivot_fixed


def efficiency_signal(
    cost: torch.Tensor, pivot: torch.Tensor, *, temperature: float = 0.15
) -> torch.Tensor:
    """Step 3: R_small = σ((τ − c) / T) − ½, positive for allocations cheaper than the pivot.

    (M,) → (M,). R_big = −R_small.
    """
    return torch.sigmoid((pivot - cost) / temperature) - 0.5


def asymmetric_shaping(
    acc: torch.Tensor,
    r_small: torch.Tensor,
    *,
    correct_threshold: float = 0.35,
    right_scale: float = 0.7,
    wrong_scale: float = 1.3,
    acc_power: float = 0.5,
    acc_floor: float = 0.05,
) -> torch.Tensor:
    """Step 4: correct allocations are rewarded for being cheap, wrong ones for looking harder.

    correct = acc > threshold; w⁺ = max(acc^p, floor); w⁻ = 1 − acc;
    Shape = correct · right · w⁺ · R_small + (1 − correct) · wrong · w⁻ · (−R_small).
    (M,), (M,) → (M,).
    """
    correct = acc > correct_threshold
    w_right = acc.clamp_min(0).pow(acc_power).clamp_min(acc_floor)
    w_wrong = 1 - acc
    return torch.where(correct, right_scale * w_right * r_small, wrong_scale * w_wrong * (-r_small))


def capo_advantages(
    acc: torch.Tensor,
    cost: torch.Tensor,
    *,
    mode: str = "capo",
    pivot_alpha: float = 0.5,
    pivot_fixed: float = 0.4,
    temperature: float = 0.15,
    correct_threshold: float = 0.35,
    right_scale: float = 0.7,
    wrong_scale: float = 1.3,
    acc_power: float = 0.5,
    acc_floor: float = 0.05,
    encourage: float = 0.25,
    gas: float = 0.05,
    correct_floor: float = 0.001,
    direct_weight: float = 0.5,
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """Advantages of the M allocations of ONE prompt group: acc (M,) in [0, 1], cost (M,) in
    [0, 1] → (M,). Every chunk of allocation m then gets A_m (docs/capo.md step 7, in the loss).
    ``reference`` (a scalar, the uniform allocation's reward at the same budget) joins the group's
    mean and std in step 1 (:func:`reference_zscore`).

    mode="capo" (docs/capo.md steps 1–6):
        A = z(acc) + encourage · Shape − gas · c, then max(A, correct_floor) where correct;
    mode="direct": A = z(acc) − direct_weight · c;  mode="none": A = z(acc).
    mode="capo_chunk" returns capo's A_m here; :func:`chunk_advantages` makes them per chunk.
    """
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"mode={mode!r}; choose one of {ADVANTAGE_MODES}")
    if acc.ndim != 1 or acc.shape != cost.shape or acc.numel() == 0:
        raise ValueError(
            f"acc and cost must be one group of equal 1-D shape (M,), got {tuple(acc.shape)} and "
            f"{tuple(cost.shape)}"
        )
    acc = acc.float()
    cost = cost.float()
    if reference is None:
        base = group_zscore(acc)  # (M,)
    else:
        base = reference_zscore(acc, reference.float())  # (M,)
    if mode == "none":
        return base
    if mode == "direct":
        return base - direct_weight * cost
    # capo and capo_chunk share A_m (capo_chunk's per-chunk part: chunk_advantages)
    pivot = cost_pivot(cost, pivot_alpha=pivot_alpha, pivot_fixed=pivot_fixed)  # ()
    r_small = efficiency_signal(cost, pivot, temperature=temperature)  # (M,)
    shape = asymmetric_shaping(
        acc,
        r_small,
        correct_threshold=correct_threshold,
        right_scale=right_scale,
        wrong_scale=wrong_scale,
        acc_power=acc_power,
        acc_floor=acc_floor,
    )  # (M,)
    advantages = base + encourage * shape - gas * cost  # (M,)
    correct = acc > correct_threshold
    return torch.where(correct, advantages.clamp_min(correct_floor), advantages)


def standardize_actions(actions: torch.Tensor, *, min_std: float = ZSCORE_MIN_STD) -> torch.Tensor:
    """Z: each chunk's actions z-scored over the group's M allocations, (M, K) → (M, K).

    Population std, no eps (the credit regression wants unit columns); a column whose std is below
    ``min_std`` (every allocation drew the same action) is 0: that chunk explains nothing.
    """
    std = actions.std(dim=0, unbiased=False, keepdim=True)  # (1, K)
    z = (actions - actions.mean(dim=0, keepdim=True)) / std.clamp_min(min_std)  # (M, K)
    return torch.where(std < min_std, torch.zeros_like(z), z)


def chunk_credit(
    reward_z: torch.Tensor, actions_z: torch.Tensor, *, ridge: float = CREDIT_RIDGE
) -> torch.Tensor:
    """ĉ = (ZᵀZ + ridge·M·I)⁻¹ Zᵀ r: each chunk's share of the group's reward, (M,), (M, K) → (K,).

    reward_z: the group's standardised reward (``group_zscore``); actions_z:
    ``standardize_actions``.
    For an orthogonal design (ZᵀZ = M·I) ĉ_k = mean_m(r_m Z_{m,k}) / (1 + ridge).
    """
    if ridge <= 0:
        raise ValueError(f"ridge={ridge}; the credit regression needs ridge > 0")
    m, k = actions_z.shape
    z = actions_z.double()
    gram = z.T @ z + ridge * m * torch.eye(k, dtype=z.dtype)  # (K, K)
    credit = torch.linalg.solve(gram, z.T @ reward_z.double())  # (K,)
    return credit.to(reward_z.dtype)


def chunk_advantages(
    advantages: torch.Tensor,
    acc: torch.Tensor,
    actions: torch.Tensor,
    *,
    ridge: float = CREDIT_RIDGE,
    weight: float = CREDIT_WEIGHT,
) -> torch.Tensor:
    """Per-chunk advantages of one group: A_{m,k} = A_m − weight · Σ_{j≠k} ĉ_j Z_{m,j} (M, K).

    advantages (M,) the shared A_m (``capo_advantages``); acc (M,) the rewards they came from;
    actions (M, K) the sampled Beta actions of the group's valid chunks. The equations and why the
    other chunks' explained reward is a baseline for chunk k: the module docstring.
    """
    if actions.ndim != 2 or actions.shape[0] != acc.shape[0] or advantages.shape != acc.shape:
        raise ValueError(
            f"actions must be (M, K) for M = {acc.shape[0]} allocations with advantages (M,), got "
            f"{tuple(actions.shape)} and {tuple(advantages.shape)}"
        )
    z = standardize_actions(actions.float())  # (M, K)
    credit = chunk_credit(group_zscore(acc.float()), z, ridge=ridge)  # (K,)
    explained = z * credit  # (M, K) e_{m,j}
    others = explained.sum(dim=1, keepdim=True) - explained  # (M, K) Σ_{j≠k} e_{m,j}
    return advantages[:, None] - weight * others


def probe_credit(probe_reward: torch.Tensor, *, min_std: float = PROBE_MIN_STD) -> torch.Tensor:
    """d_k = (q_k − mean q) / max(std q, min_std): one prompt's probe rewards (K,) → (K,).

    q_k is the reward of probe k (chunk k at s_max, the others at s_min); population std.
    """
    if probe_reward.ndim != 1 or probe_reward.numel() == 0:
        raise ValueError(f"probe rewards must be (K,), got {tuple(probe_reward.shape)}")
    q = probe_reward.float()
    return (q - q.mean()) / q.std(unbiased=False).clamp_min(min_std)


def probe_advantages(
    advantages: torch.Tensor,
    actions: torch.Tensor,
    probe_reward: torch.Tensor,
    *,
    weight: float,
) -> torch.Tensor:
    """Per-chunk advantages with probe credit: A_{m,k} = A_m + w · d_k · (a_{m,k} − ā_k) / σ_U.

    → (M, K); ā_k the group's mean action on chunk k, σ_U = ``UNIFORM_ACTION_STD``.

    advantages (M,) shared or (M, K) per chunk; actions (M, K) the group's sampled Beta actions of
    its valid chunks; probe_reward (K,) the rewards of the K probes. Equations and why the term is
    a policy gradient: the module docstring.
    """
    m, k = actions.shape if actions.ndim == 2 else (-1, -1)
    if m != advantages.shape[0] or probe_reward.shape != (k,) or advantages.ndim not in (1, 2):
        raise ValueError(
            f"need actions (M, K), advantages (M,) or (M, K) and probe rewards (K,), got "
            f"{tuple(actions.shape)}, {tuple(advantages.shape)} and {tuple(probe_reward.shape)}"
        )
    base = advantages if advantages.ndim == 2 else advantages[:, None].expand(m, k)
    centred = (actions.float() - actions.float().mean(dim=0, keepdim=True)) / UNIFORM_ACTION_STD
    return base + weight * probe_credit(probe_reward)[None, :] * centred  # (M, K)


def token_cost(visual_tokens: torch.Tensor, vanilla_tokens: torch.Tensor | int) -> torch.Tensor:
    """Cost = fraction of the full-resolution visual tokens actually spent (what the user pays).

    visual_tokens (M,), vanilla_tokens () or (M,) → (M,). In [0, 1] whenever scales are <= 1 (the
    backbone's per-frame pixel cap makes scale 1.0 the largest size).
    """
    vanilla = torch.as_tensor(vanilla_tokens, dtype=torch.float32)
    if bool((vanilla <= 0).any()):
        raise ValueError(f"vanilla_tokens must be positive, got {vanilla_tokens}")
    return torch.as_tensor(visual_tokens, dtype=torch.float32) / vanilla


def scale_cost(
    scales: torch.Tensor,
    scale_min: float,
    scale_max: float,
    chunk_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference cost: the normalised mean scale (mean_k s_k − s_min) / (s_max − s_min).

    scales (M, K), chunk_mask (M, K) or None (all valid) → (M,).
    """
    if chunk_mask is None:
        chunk_mask = torch.ones_like(scales, dtype=torch.bool)
    valid = chunk_mask.to(scales.dtype)  # (M, K)
    mean = (scales * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1)  # (M,)
    return (mean - scale_min) / (scale_max - scale_min)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1)


def ppo_clip_loss(
    log_prob_new: torch.Tensor,
    log_prob_old: torch.Tensor,
    advantages: torch.Tensor,
    chunk_mask: torch.Tensor,
    eps_low: float = CLIP_LOW,
    eps_high: float = CLIP_HIGH,
    dual_clip: float = DUAL_CLIP,
) -> torch.Tensor:
    """Clipped policy-gradient loss on the Beta log-densities of stored actions → scalar.

    log_prob_new, log_prob_old (N, K); advantages (N,), broadcast to every chunk of allocation n, or
    (N, K) per chunk (``chunk_advantages``); chunk_mask (N, K).
    Per chunk: ρ = exp(clamp(new − old, ±20));
    l = max(−A ρ, −A clip(ρ, 1 − eps_low, 1 + eps_high)), and for A < 0 also min(l, −A · dual_clip).
    Mean over valid chunks.
    """
    log_ratio = (log_prob_new - log_prob_old.detach()).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = log_ratio.exp()  # (N, K)
    adv = advantages.detach()
    adv = (adv[:, None] if adv.ndim == 1 else adv).expand_as(ratio)  # (N, K)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = torch.maximum(unclipped, clipped)  # (N, K)
    loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)  # (N, K)
    return _masked_mean(loss, chunk_mask)


def group_ppo_clip_loss(
    log_prob_new: torch.Tensor,
    log_prob_old: torch.Tensor,
    advantages: torch.Tensor,
    chunk_mask: torch.Tensor,
) -> torch.Tensor:
    """:func:`ppo_clip_loss` over B prompt groups of M allocations each → scalar.

    log_prob_new, log_prob_old (B, M, K); advantages (B, M) shared by an allocation's chunks, or
    (B, M, K) per chunk; chunk_mask (B, K), shared by the M allocations of a prompt. Mean over all
    valid chunks of all B · M allocations.
    """
    b, m, k = log_prob_new.shape
    mask = chunk_mask[:, None].expand(b, m, k).reshape(b * m, k)  # (B·M, K)
    return ppo_clip_loss(
        log_prob_new.reshape(b * m, k),
        log_prob_old.reshape(b * m, k),
        advantages.reshape(b * m, *advantages.shape[2:]),  # (B·M,) or (B·M, K)
        mask,
    )


def similarity_loss(
    features: torch.Tensor,
    mean_scales: torch.Tensor,
    chunk_mask: torch.Tensor,
    centre: float = 0.55,
    width: float = 0.12,
    margin: float = 0.05,
) -> torch.Tensor:
    """Temporal-similarity regulariser: a near-identical next chunk should cost less → scalar.

    features (N, K, D) chunk thumbnail features, mean_scales (N, K) Beta-mean scales, chunk_mask
    (N, K). For adjacent valid chunks with cosine similarity u: w = σ((u − centre) / width)
    (detached), ŝ = log(mean scale), loss = mean over pairs of w · ReLU(ŝ_{k+1} − ŝ_k + margin · w).
    """
    with torch.no_grad():
        u = F.cosine_similarity(features[:, 1:], features[:, :-1], dim=-1)  # (N, K-1)
        w = torch.sigmoid((u - centre) / width)  # (N, K-1)
    s_hat = mean_scales.clamp_min(1e-6).log()  # (N, K)
    gap = F.relu(s_hat[:, 1:] - s_hat[:, :-1] + margin * w)  # (N, K-1)
    pairs = chunk_mask[:, 1:] & chunk_mask[:, :-1]  # (N, K-1)
    return _masked_mean(w * gap, pairs)


def concentration_loss(
    alpha: torch.Tensor, beta: torch.Tensor, chunk_mask: torch.Tensor
) -> torch.Tensor:
    """mean(α + β) over valid chunks → scalar: keeps the Betas from becoming needle-sharp.

    alpha, beta, chunk_mask (N, K).
    """
    return _masked_mean(alpha + beta, chunk_mask)


def concentration_cap_loss(
    alpha: torch.Tensor, beta: torch.Tensor, chunk_mask: torch.Tensor, max_concentration: float
) -> torch.Tensor:
    """mean(ReLU(α + β − max_concentration)) over valid chunks → scalar: 0 below the cap.

    alpha, beta, chunk_mask (N, K). A guard against needle-sharp Betas (ours,
    ``--max-concentration``): unlike L_con's gentle pull on every chunk it acts only on the chunks
    above the cap.
    """
    return _masked_mean(F.relu(alpha + beta - max_concentration), chunk_mask)


def total_loss(
    pg: torch.Tensor,
    sim: torch.Tensor,
    con: torch.Tensor,
    attention: torch.Tensor,
    *,
    sim_weight: float,
    con_weight: float,
    attention_weight: float,
    cap: torch.Tensor | None = None,
    cap_weight: float = CONCENTRATION_CAP_WEIGHT,
) -> torch.Tensor:
    """L = L_pg + sim_weight · L_sim + con_weight · L_con + attention_weight · L_attention
    [+ cap_weight · L_cap] → scalar.

    No KL to a reference policy and no entropy bonus (docs/capo.md). The attention term is ours (the
    distillation of :mod:`resadapt.relevance`); its weight 0 gives CAPO's loss. So is the
    concentration cap (``concentration_cap_loss``; None: no cap).
    """
    loss = pg + sim_weight * sim + con_weight * con + attention_weight * attention
    return loss if cap is None else loss + cap_weight * cap
