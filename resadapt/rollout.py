"""CAPO rollouts: M sampled allocations per prompt, the frozen backbone's answers, their rewards.

Owns the knobs of sampling, reward and credit (:class:`RolloutConfig`, whose fields the training
config inherits), one step's data collection (decode once through an LRU cache, per-chunk Beta
draws from a per-prompt generator, one backbone batch per prompt, grading or answer scoring, CAPO
advantages) and the deterministic validation pass. Knows nothing about optimisers, checkpoints or
processes (see :mod:`resadapt.trainer`).

Shape legend: B prompts, M allocations (rollouts) per prompt, N answers per allocation, K chunks,
T frames, D features.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from allocator import log_prob, mean_scale, sample
from resadapt.capo import (
    ADVANTAGE_MODES,
    CREDIT_RIDGE,
    PER_CHUNK_MODES,
    PROBE_CREDIT,
    capo_advantages,
    chunk_advantages,
    probe_advantages,
    scale_cost,
    token_cost,
)
from resadapt.cli import check_choices, check_field, default_of, option
from resadapt.config import MAX_NEW_TOKENS, Request
from resadapt.data import Example
from resadapt.errors import ResAdaptError, VideoError
from resadapt.grading import grade
from resadapt.pipeline import Pipeline
from resadapt.policies import COMPOSE, PolicyOptions, allocator_inputs
from resadapt.policies.compose import OPERATOR_CHAINS, chain_operator
from resadapt.policies.learned import context_probe
from resadapt.probe import FeatureCache
from resadapt.video import SampledVideo

logger = logging.getLogger(__name__)

REWARDS = ("grade", "logprob")
"""grade: graded greedy (or sampled) answers; logprob: the backbone's probability of the gold
answer, exp(mean token log-probability) (dense, no generation)."""
COSTS = ("tokens", "scale")
"""tokens: fraction of the full-resolution visual tokens spent (ours); scale: the reference's
normalised mean scale."""
CORRECT_THRESHOLD = 0.35
"""An allocation whose reward exceeds this counts as correct (docs/capo.md step 4); also the logged
accuracy, so it means the same under both rewards."""
OWN_OPERATOR = "resize"
TRAIN_OPERATORS = (OWN_OPERATOR, *(COMPOSE.join(chain) for chain in OPERATOR_CHAINS))
"""What a sampled allocation goes through before the backbone (``--operator``): resize (the
allocator's own), or the operators of a ``learned+…`` policy (resadapt.policies.compose)."""
SAMPLING_STREAM, ANSWER_STREAM = 0, 1
"""Sub-streams of a prompt's seed: allocation draws, and answer sampling when N > 1."""


@dataclass
class RolloutConfig:
    """How a step's allocations are drawn, answered, rewarded and credited (training's flags;
    :class:`resadapt.train_config.TrainConfig` inherits them)."""

    num_rollouts: int = option("sampled allocations M per prompt", 8)
    answers_per_rollout: int = option(
        "answers N per allocation: 1 greedy, more sampled (--reward grade)", 1
    )
    temperature: float = option("sampling temperature of the answers when N > 1", 1.0)
    top_p: float = option(
        "nucleus (top-p) of the sampled answers when N > 1, in (0, 1]; 1: off (the checkpoint's "
        "own value is never inherited)",
        1.0,
    )
    top_k: int = option(
        "top-k of the sampled answers when N > 1; 0: off (never the checkpoint's own)", 0
    )
    max_new_tokens: int = option(
        "longest answer generated, in tokens", default_of(Request, "max_new_tokens")
    )
    reward: str = option(
        "grade: graded answers; logprob: exp(mean log-prob of the gold answer)",
        "grade",
        choices=REWARDS,
    )
    cost: str = option(
        "tokens: fraction of full-res visual tokens; scale: normalised mean scale",
        "tokens",
        choices=COSTS,
    )
    advantage: str = option(
        "capo; capo_chunk: capo plus per-chunk credit (each chunk's advantage loses what the "
        "other chunks' draws explain of the reward); the ablations direct (z(acc) − λc) and none",
        "capo",
        choices=ADVANTAGE_MODES,
    )
    credit_ridge: float = option(
        "ridge λ of the per-chunk credit regression (--advantage capo_chunk; > 0)", CREDIT_RIDGE
    )
    probe_credit: float = option(
        "weight w of the probe credit: per prompt, K extra backbone rows (chunk k at full size, "
        "the others at the smallest) say how much each chunk alone helps the answer; chunk k's "
        "advantage gains w·d_k·(a_k − mean a_k)·√12, d_k its probe's reward standardised over "
        "the K probes (resadapt.capo); 0: no probes",
        PROBE_CREDIT,
    )
    uniform_reference: bool | None = option(
        "give every CAPO group a reference: the reward of the uniform allocation at the same "
        "budget joins the group's mean and std (docs/capo.md); none: on for the probe head, off "
        "otherwise",
        None,
    )
    operator: str = option(
        "the operators the allocator is trained under, as at inference with --policy "
        "learned+OPERATOR: resize, select, prune or select+prune; every sampled allocation (and "
        "validation) goes through them, so the reward and the cost (the tokens that reach the "
        "language model) are those of inference",
        OWN_OPERATOR,
        choices=TRAIN_OPERATORS,
    )
    seed: int = option("seed of the init, the data order and the draws", 0)

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:  # the other configs a subclass also inherits (data, backbone)
            parent()
        check = partial(check_field, self)
        check("answers_per_rollout", self.answers_per_rollout >= 1, "must be at least 1")
        check(
            "num_rollouts",
            self.num_rollouts >= 2,
            "must be at least 2 (CAPO compares the allocations of one prompt)",
        )
        check(
            "max_new_tokens",
            1 <= self.max_new_tokens <= MAX_NEW_TOKENS,
            f"must be in [1, {MAX_NEW_TOKENS}]",
        )
        check("temperature", self.temperature > 0, "must be positive")
        check("top_p", 0 < self.top_p <= 1, "must be in (0, 1]")
        check("top_k", self.top_k >= 0, "must be at least 0")
        check("credit_ridge", self.credit_ridge > 0, "must be positive")
        check("probe_credit", self.probe_credit >= 0, "must be 0 or positive")
        check_choices(self)
        if "prune" in self.operator and self.reward != "grade":
            raise ResAdaptError(
                f"--operator {self.operator} needs --reward grade (the gold answer's probability "
                "is scored on unpruned inputs)"
            )
        if self.answers_per_rollout > 1 and self.reward != "grade":
            raise ResAdaptError(
                "--answers-per-rollout > 1 needs --reward grade (the log-probability of the gold "
                "answer is deterministic); set it to 1"
            )


def rollout_operator(operator: str, request: Request):
    """The Operator a ``--operator`` name makes (select's sizes from the request)."""
    chain = () if operator == OWN_OPERATOR else tuple(operator.split(COMPOSE))
    return chain_operator(chain, PolicyOptions(select_sizes=request.select_sizes))


PROBE_SCORING = RolloutConfig(reward="logprob", max_new_tokens=1)
"""How probe rows are scored, whatever the run's reward: by the gold answer's probability (a
finite difference needs a dense reward)."""


def prompt_seed(seed: int, position: int, stream: int) -> int:
    """Seed of one prompt's draws, from (run seed, the prompt's position in the data stream).

    A prompt's allocations then do not depend on which process samples it, or on a resume.
    """
    return int(np.random.SeedSequence([seed, position, stream]).generate_state(1)[0])


class DecodeCache:
    """Decoded videos by path, least recently used first out, bounded in bytes of frames.

    Unreadable files are remembered with their error, so they are neither decoded nor logged twice.
    """

    def __init__(self, pipeline: Pipeline, max_bytes: int):
        self.pipeline = pipeline
        self.max_bytes = max_bytes
        self._videos: OrderedDict[str, SampledVideo] = OrderedDict()
        self._bytes = 0
        self.failures: dict[str, str] = {}

    def get(self, path: str, request: Request) -> SampledVideo:
        """The sampled frames of ``path``; raises VideoError for an unreadable file."""
        if path in self.failures:
            raise VideoError(self.failures[path])
        if path in self._videos:
            self._videos.move_to_end(path)
            return self._videos[path]
        try:
            video = self.pipeline.decode(path, request)
        except VideoError as e:
            self.failures[path] = str(e)
            logger.warning("skipping an unreadable video: %s", e)
            raise
        size = video.frames.nbytes
        if size <= self.max_bytes:
            self._videos[path] = video
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._videos.popitem(last=False)
                self._bytes -= old.frames.nbytes
        return video


@dataclass
class Prompt:
    """One decoded training or validation example."""

    example: Example
    request: Request
    """Carries the prompt text (``example.prompt()``) and the frame sampling."""
    video: SampledVideo
    position: int
    """Position in the run's data stream (step × prompts_per_step + slot); seeds its draws."""


@dataclass
class RolloutBatch:
    """What the clipped update needs from one step's rollouts, and the step's statistics."""

    inputs: dict[str, torch.Tensor]
    """Allocator inputs of the B prompts (see ``policies.allocator_inputs``)."""
    actions: torch.Tensor
    """(B, M, K) sampled Beta actions (0.5 on padding chunks)."""
    log_prob: torch.Tensor
    """(B, M, K) their log-densities under the sampling policy."""
    advantages: torch.Tensor
    """(B, M, K) advantage of every chunk of every allocation: CAPO's A_m on each of its chunks,
    or per chunk (``--advantage capo_chunk``); 0 on padding chunks."""
    chunk_mask: torch.Tensor
    """(B, K) valid chunks."""
    stats: dict[str, float]
    """Sums over this process's rollouts (keys in ``ROLLOUT_STATS``), reduced across processes."""


ROLLOUT_STATS = (
    "prompts",
    "rollouts",
    "reward",
    "correct",
    "retention",
    "visual_tokens",
    "scale_spread",
    "policy_spread",
    "advantage",
    "advantage_sq",
    "probe_rows",
    "probe_gap",
)
"""Sums a step reports: counts, then per-rollout sums (policy_spread, probe_gap are per prompt;
probe_rows counts the backbone rows the probes ran, cached ones excluded)."""


def probe_scales(chunks: int, scale_min: float, scale_max: float) -> np.ndarray:
    """(K, K): probe k shows chunk k at ``scale_max`` and every other chunk at ``scale_min``."""
    scales = np.full((chunks, chunks), scale_min, dtype=np.float64)
    np.fill_diagonal(scales, scale_max)
    return scales


def score_allocations(
    pipeline: Pipeline,
    prompt: Prompt,
    scales: np.ndarray,
    config: RolloutConfig,
    *,
    seed: int,
    fill: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run the frozen backbone on M allocations of one prompt and score them by ``config.reward``.

    scales (M, K) → reward (M,) in [0, 1], visual tokens (M,), vanilla tokens of the video.
    "grade": mean grade of N = ``answers_per_rollout`` answers per allocation (greedy for N = 1,
    sampled at ``temperature`` / ``top_p`` / ``top_k`` otherwise, micro-batch j seeded
    ``seed + j``); "logprob": exp(log p(gold | video, question) / n), n the scored tokens (answer +
    end of turn). The M·N rows run in micro-batches under the backbone's token budget. ``fill``:
    whether the budget's fit raises the scales to use it (the policy's ``fills_budget``).
    """
    backbone = pipeline.backbone
    example, question = prompt.example, prompt.request.question
    operator = rollout_operator(config.operator, prompt.request)
    allocations = [
        pipeline.allocate(prompt.video, prompt.request, scales=s, operator=operator, fill=fill)
        for s in scales
    ]
    videos = [pipeline.chunked(prompt.video, a) for a in allocations]
    tokens = torch.tensor([a.visual_tokens for a in allocations], dtype=torch.float32)  # (M,)
    vanilla = allocations[0].vanilla_tokens
    m = len(videos)
    if config.reward == "logprob":
        gold = example.gold()
        logp = backbone.answer_logprob(videos, [question] * m, [gold] * m, per_token=True)
        scores = torch.exp(logp.float())  # (M,) per-token geometric-mean probability
        return scores, tokens, vanilla
    n = config.answers_per_rollout
    rows = [v for v in videos for _ in range(n)]  # (M·N,) allocation-major
    answers: list[str] = [""] * len(rows)
    sampling = {"temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k}
    sampling = {} if n == 1 else sampling
    for j, (index, inputs) in enumerate(backbone.batches(rows, [question] * len(rows))):
        inputs = pipeline.encode(inputs, [allocations[b // n] for b in index])  # prune: the tower
        out = backbone.generate(inputs, config.max_new_tokens, seed=seed + j, **sampling)
        for b, answer in zip(index, out, strict=True):
            answers[b] = answer
    options = len(example.options or [])
    grades = [grade(example.problem_type, a, example.gold(), options) for a in answers]
    scores = torch.tensor(grades, dtype=torch.float32).view(m, n).mean(dim=1)  # (M,)
    return scores, tokens, vanilla


def _contexts(
    pipeline: Pipeline,
    prompts: list[Prompt],
    allocator,
    features: FeatureCache | None = None,
    probe_model=None,
) -> dict[str, torch.Tensor]:
    """The allocator's inputs for the prompts; a probe head's probe passes come from ``features``
    (by video path and question: computed once per prompt, across rollouts and epochs)."""
    cfg = allocator.config
    ctxs = [pipeline.context(p.video, p.request.question, cfg.thumb_side) for p in prompts]
    device = next(allocator.parameters()).device
    probe = None
    if cfg.thumb_encoder == "probe":
        probe = [
            context_probe(cfg, c, probe_model, features, p.example.video)
            for c, p in zip(ctxs, prompts, strict=True)
        ]
    return allocator_inputs(ctxs, pipeline.backbone.tokenizer, cfg.max_query_tokens, device, probe)


def uses_reference(config: RolloutConfig, allocator) -> bool:
    """Whether CAPO's groups get the uniform allocation's reward as a reference (``None``: for the
    probe head)."""
    if config.uniform_reference is None:
        return allocator.config.thumb_encoder == "probe"
    return config.uniform_reference


def _reference_reward(
    pipeline: Pipeline, prompt: Prompt, k: int, config: RolloutConfig, cache: dict | None
) -> torch.Tensor:
    """The reward of the uniform allocation of the prompt's K chunks at the request's budget
    (every chunk at one scale, fitted to fill the budget), scored as the rollouts are; cached by
    (video, question, chunks, "uniform")."""
    key = (prompt.example.video, prompt.request.question, k, "uniform")
    if cache is not None and key in cache:
        return cache[key]
    seed = prompt_seed(config.seed, prompt.position, ANSWER_STREAM)
    scores, _, _ = score_allocations(pipeline, prompt, np.ones((1, k)), config, seed=seed)
    if cache is not None:
        cache[key] = scores[0]
    return scores[0]


@torch.no_grad()
def collect_rollouts(
    pipeline: Pipeline,
    allocator,
    prompts: list[Prompt],
    config: RolloutConfig,
    probe_cache: dict | None = None,
    features: FeatureCache | None = None,
    probe_model=None,
) -> RolloutBatch:
    """Sample ``config.num_rollouts`` allocations per prompt, score them, compute CAPO advantages.

    One allocator forward for all B prompts (eval mode); per prompt, one Beta per chunk and M
    draws from the prompt's own generator (exact per-chunk sampling); each allocation is fitted to
    the request's budget when it has one (``train --budget``), as at inference, and its cost is the
    token fraction actually spent. With ``probe_credit`` > 0 the K probes of each prompt
    (``probe_scales``, scored by the gold answer's probability) add probe credit
    (``capo.probe_advantages``); their rewards are kept in ``probe_cache`` (by video, question and
    chunk count; the backbone is frozen and the scoring deterministic), so a prompt seen again in a
    later epoch costs no probe rows. A probe head's probe passes come from ``features`` (once per
    video and question); with ``uses_reference`` the uniform allocation's reward (cached in
    ``probe_cache``) joins every group (``capo.reference_zscore``).
    """
    assert prompts, "collect_rollouts needs at least one prompt"
    inputs = _contexts(pipeline, prompts, allocator, features, probe_model)
    fill = allocator.config.fills_budget
    reference = uses_reference(config, allocator)
    out = _policy(allocator, inputs)
    mask = inputs["chunk_mask"]  # (B, K)
    b, k_max, m = len(prompts), mask.shape[1], config.num_rollouts
    actions = torch.full((b, m, k_max), 0.5)  # (B, M, K)
    advantages = torch.zeros(b, m, k_max)  # (B, M, K)
    stats = dict.fromkeys(ROLLOUT_STATS, 0.0)
    policy_scales = _mean_scales(allocator, out)  # (B, K)
    for i, prompt in enumerate(prompts):
        k = int(mask[i].sum())
        draws, scales = _draw(allocator, out, i, k, prompt, config)  # (M, K_i) each
        answer_seed = prompt_seed(config.seed, prompt.position, ANSWER_STREAM)
        scores, tokens, vanilla = score_allocations(
            pipeline, prompt, scales.double().numpy(), config, seed=answer_seed, fill=fill
        )  # (M,), (M,), int
        costs = _costs(allocator, config.cost, scales, tokens, vanilla)  # (M,)
        ref = _reference_reward(pipeline, prompt, k, config, probe_cache) if reference else None
        adv = capo_advantages(
            scores,
            costs,
            mode=config.advantage,
            correct_threshold=CORRECT_THRESHOLD,
            reference=ref,
        )  # (M,)
        per_chunk = _chunk_credit(
            pipeline, allocator, prompt, config, adv, scores, draws, probe_cache, stats
        )  # (M, K_i), or (M,) when every chunk shares A_m
        advantages[i, :, :k] = per_chunk if per_chunk.ndim == 2 else per_chunk[:, None]
        actions[i, :, :k] = draws
        _add_rollout_stats(stats, scores, tokens, vanilla, scales, policy_scales[i, :k], adv)
    return _batch(inputs, out, actions, advantages, stats)


def _policy(allocator, inputs: dict[str, torch.Tensor]):
    """One allocator forward on the B prompts, in eval mode (no dropout), its mode restored."""
    was_training = allocator.training
    allocator.eval()
    out = allocator(**inputs)
    allocator.train(was_training)
    return out


def _mean_scales(allocator, out) -> torch.Tensor:
    """(B, K) the policy's Beta-mean scales, on the CPU."""
    cfg = allocator.config
    return mean_scale(out.alpha, out.beta, scale_min=cfg.scale_min, scale_max=cfg.scale_max).cpu()


def _draw(
    allocator, out, i: int, k: int, prompt: Prompt, config: RolloutConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """M Beta actions (M, K_i) for the K_i chunks of prompt ``i`` and their scales (M, K_i), from
    the prompt's own generator (seeded by the run seed and its stream position)."""
    cfg, m = allocator.config, config.num_rollouts
    generator = torch.Generator().manual_seed(
        prompt_seed(config.seed, prompt.position, SAMPLING_STREAM)
    )
    alpha = out.alpha[i, :k].float().cpu().expand(m, k)  # (M, K_i)
    beta = out.beta[i, :k].float().cpu().expand(m, k)  # (M, K_i)
    draws, scales, _ = sample(
        alpha, beta, generator, scale_min=cfg.scale_min, scale_max=cfg.scale_max
    )  # (M, K_i) each
    return draws, scales


def _costs(
    allocator, cost: str, scales: torch.Tensor, tokens: torch.Tensor, vanilla: int
) -> torch.Tensor:
    """(M,) cost of each allocation: its token fraction (``tokens``) or normalised mean scale."""
    if cost == "tokens":
        return token_cost(tokens, vanilla)
    return scale_cost(scales, allocator.config.scale_min, allocator.config.scale_max)


def _chunk_credit(
    pipeline: Pipeline,
    allocator,
    prompt: Prompt,
    config: RolloutConfig,
    adv: torch.Tensor,
    scores: torch.Tensor,
    draws: torch.Tensor,
    probe_cache: dict | None,
    stats: dict,
) -> torch.Tensor:
    """Each chunk's advantage: A_m (M,) itself, or per chunk (M, K_i) with ``capo_chunk``'s credit
    and the probe credit when ``probe_credit`` > 0."""
    per_chunk = adv  # (M,)
    if config.advantage in PER_CHUNK_MODES:
        per_chunk = chunk_advantages(adv, scores, draws, ridge=config.credit_ridge)  # (M, K_i)
    if config.probe_credit:
        k = draws.shape[1]
        probes = _probe_rewards(pipeline, prompt, k, allocator.config, probe_cache, stats)  # (K_i,)
        per_chunk = probe_advantages(per_chunk, draws, probes, weight=config.probe_credit)
        stats["probe_gap"] += float(probes.max() - probes.mean())
    return per_chunk


def _add_rollout_stats(
    stats: dict,
    scores: torch.Tensor,
    tokens: torch.Tensor,
    vanilla: int,
    scales: torch.Tensor,
    policy_scales: torch.Tensor,
    adv: torch.Tensor,
) -> None:
    """Add one prompt's M rollouts to the step's sums (``ROLLOUT_STATS``)."""
    stats["prompts"] += 1
    stats["rollouts"] += len(scores)
    stats["reward"] += float(scores.sum())
    stats["correct"] += float((scores > CORRECT_THRESHOLD).sum())
    stats["retention"] += float((tokens / vanilla).sum())
    stats["visual_tokens"] += float(tokens.sum())
    stats["scale_spread"] += float(scales.double().std(dim=1, unbiased=False).sum())
    stats["policy_spread"] += float(policy_scales.double().std(unbiased=False))
    stats["advantage"] += float(adv.double().sum())
    stats["advantage_sq"] += float(adv.double().pow(2).sum())


def _batch(
    inputs: dict[str, torch.Tensor],
    out,
    actions: torch.Tensor,
    advantages: torch.Tensor,
    stats: dict,
) -> RolloutBatch:
    """The step's rollouts on the allocator's device, with the actions' log-densities under the
    sampling policy."""
    device = out.alpha.device
    b, m, k_max = actions.shape
    actions = actions.to(device)
    old = log_prob(
        out.alpha[:, None].expand(b, m, k_max), out.beta[:, None].expand(b, m, k_max), actions
    )  # (B, M, K)
    return RolloutBatch(
        inputs=inputs,
        actions=actions,
        log_prob=old,
        advantages=advantages.to(device),
        chunk_mask=inputs["chunk_mask"],
        stats=stats,
    )


def _probe_rewards(
    pipeline: Pipeline, prompt: Prompt, k: int, cfg, cache: dict | None, stats: dict
) -> torch.Tensor:
    """Rewards (K,) of the prompt's K probes, from ``cache`` when it has them.

    Probes are always scored by the gold answer's probability (``--reward logprob``), whatever
    the run's reward: a finite difference needs a dense reward (docs/results.md, "Probe credit").
    """
    key = (prompt.example.video, prompt.request.question, k)
    if cache is not None and key in cache:
        return cache[key]
    scales = probe_scales(k, cfg.scale_min, cfg.scale_max)  # (K, K)
    scores, _, _ = score_allocations(pipeline, prompt, scales, PROBE_SCORING, seed=0)
    stats["probe_rows"] += k
    if cache is not None:
        cache[key] = scores
    return scores


VALIDATION_STATS = ("videos", "accuracy", "retention", "visual_tokens", "scale_spread")
"""Sums a validation pass reports (per-video sums after the count)."""


@torch.no_grad()
def validate(
    pipeline: Pipeline,
    allocator,
    prompts: list[Prompt],
    *,
    max_new_tokens: int,
    batch_size: int,
    features: FeatureCache | None = None,
    probe_model=None,
    operator: str = OWN_OPERATOR,
) -> dict[str, float]:
    """The deterministic policy (Beta-mean scales) through ``operator`` and greedy answers on
    ``prompts``: sums."""
    stats = dict.fromkeys(VALIDATION_STATS, 0.0)
    was_training = allocator.training
    allocator.eval()
    backbone = pipeline.backbone
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        inputs = _contexts(pipeline, batch, allocator, features, probe_model)
        scales = _mean_scales(allocator, allocator(**inputs))  # (B, K)
        counts = inputs["chunk_mask"].sum(dim=1).tolist()  # (B,)
        fill = allocator.config.fills_budget
        allocations = [
            pipeline.allocate(
                p.video,
                p.request,
                scales=scales[i, :k].double().numpy(),
                operator=rollout_operator(operator, p.request),
                fill=fill,
            )
            for i, (p, k) in enumerate(zip(batch, counts, strict=True))
        ]
        videos = [pipeline.chunked(p.video, a) for p, a in zip(batch, allocations, strict=True)]
        questions = [p.request.question for p in batch]
        answers: list[str] = [""] * len(batch)
        for index, inputs in backbone.batches(videos, questions):
            inputs = pipeline.encode(inputs, [allocations[b] for b in index])
            for b, answer in zip(index, backbone.generate(inputs, max_new_tokens), strict=True):
                answers[b] = answer
        for i, (p, a, answer) in enumerate(zip(batch, allocations, answers, strict=True)):
            ex = p.example
            stats["videos"] += 1
            stats["accuracy"] += grade(ex.problem_type, answer, ex.gold(), len(ex.options or []))
            stats["retention"] += a.visual_tokens / a.vanilla_tokens
            stats["visual_tokens"] += a.visual_tokens
            stats["scale_spread"] += float(scales[i, : counts[i]].double().std(unbiased=False))
    allocator.train(was_training)
    return stats


def mean_or_nan(total: float, count: float) -> float:
    return total / count if count else math.nan
