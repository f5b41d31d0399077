"""CAPO rollouts: M sampled allocations per prompt, the frozen backbone's answers, their rewards.

Owns one step's data collection (decode once through an LRU cache, per-chunk Beta draws from a
per-prompt generator, one backbone batch per prompt, grading or answer scoring, CAPO advantages)
and the deterministic validation pass. Knows nothing about optimisers, checkpoints, processes or
the command line (see :mod:`resadapt.train`).

Shape legend: B prompts, M allocations (rollouts) per prompt, N answers per allocation, K chunks,
T frames, D features.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from allocator import log_prob, mean_scale, sample
from resadapt.capo import (
    CREDIT_RIDGE,
    PER_CHUNK_MODES,
    PROBE_CREDIT,
    capo_advantages,
    chunk_advantages,
    probe_advantages,
    scale_cost,
    token_cost,
)
from resadapt.data import Example
from resadapt.errors import VideoError
from resadapt.grading import grade
from resadapt.pipeline import Pipeline, Request
from resadapt.policies import allocator_inputs
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
SAMPLING_STREAM, ANSWER_STREAM = 0, 1
"""Sub-streams of a prompt's seed: allocation draws, and answer sampling when N > 1."""


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
    *,
    reward: str,
    answers_per_rollout: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    top_p: float = 1.0,
    top_k: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run the frozen backbone on M allocations of one prompt and score them.

    scales (M, K) → reward (M,) in [0, 1], visual tokens (M,), vanilla tokens of the video.
    "grade": mean grade of N answers per allocation (greedy for N = 1, sampled at
    ``temperature`` / ``top_p`` / ``top_k`` otherwise, micro-batch j seeded ``seed + j``);
    "logprob": exp(log p(gold | video, question) / n), n the scored tokens (answer + end of turn).
    The M·N rows run in micro-batches under the backbone's token budget.
    """
    backbone = pipeline.backbone
    example, question = prompt.example, prompt.request.question
    allocations = [pipeline.allocate(prompt.video, prompt.request, scales=s) for s in scales]
    videos = [pipeline.chunked(prompt.video, a) for a in allocations]
    tokens = torch.tensor([sum(a.tokens) for a in allocations], dtype=torch.float32)  # (M,)
    vanilla = allocations[0].vanilla_tokens
    m = len(videos)
    if reward == "logprob":
        gold = example.gold()
        logp = backbone.answer_logprob(videos, [question] * m, [gold] * m, per_token=True)
        scores = torch.exp(logp.float())  # (M,) per-token geometric-mean probability
        return scores, tokens, vanilla
    n = answers_per_rollout
    rows = [v for v in videos for _ in range(n)]  # (M·N,) allocation-major
    answers: list[str] = [""] * len(rows)
    sampling = {} if n == 1 else {"temperature": temperature, "top_p": top_p, "top_k": top_k}
    for j, (index, inputs) in enumerate(backbone.batches(rows, [question] * len(rows))):
        out = backbone.generate(inputs, max_new_tokens, seed=seed + j, **sampling)
        for b, answer in zip(index, out, strict=True):
            answers[b] = answer
    options = len(example.options or [])
    grades = [grade(example.problem_type, a, example.gold(), options) for a in answers]
    scores = torch.tensor(grades, dtype=torch.float32).view(m, n).mean(dim=1)  # (M,)
    return scores, tokens, vanilla


def _contexts(pipeline: Pipeline, prompts: list[Prompt], allocator) -> dict[str, torch.Tensor]:
    side = allocator.config.thumb_side
    ctxs = [pipeline.context(p.video, p.request.question, side) for p in prompts]
    device = next(allocator.parameters()).device
    return allocator_inputs(
        ctxs, pipeline.backbone.tokenizer, allocator.config.max_query_tokens, device
    )


@torch.no_grad()
def collect_rollouts(
    pipeline: Pipeline,
    allocator,
    prompts: list[Prompt],
    *,
    num_rollouts: int,
    answers_per_rollout: int,
    reward: str,
    cost: str,
    advantage: str,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    top_p: float = 1.0,
    top_k: int = 0,
    credit_ridge: float = CREDIT_RIDGE,
    probe_credit: float = PROBE_CREDIT,
    probe_cache: dict | None = None,
) -> RolloutBatch:
    """Sample ``num_rollouts`` allocations per prompt, score them, and compute CAPO advantages.

    One allocator forward for all B prompts (eval mode); per prompt, one Beta per chunk and M
    draws from the prompt's own generator (exact per-chunk sampling); each allocation is fitted to
    the request's budget when it has one (``train --budget``), as at inference, and its cost is the
    token fraction actually spent. With ``probe_credit`` > 0 the K probes of each prompt
    (``probe_scales``, scored by the gold answer's probability) add probe credit
    (``capo.probe_advantages``); their rewards are kept in ``probe_cache`` (by video, question and
    chunk count; the backbone is frozen and the scoring deterministic), so a prompt seen again in a
    later epoch costs no probe rows.
    """
    assert prompts, "collect_rollouts needs at least one prompt"
    cfg = allocator.config
    was_training = allocator.training
    allocator.eval()
    inputs = _contexts(pipeline, prompts, allocator)
    out = allocator(**inputs)
    allocator.train(was_training)
    mask = inputs["chunk_mask"]  # (B, K)
    b, k_max, m = len(prompts), mask.shape[1], num_rollouts
    actions = torch.full((b, m, k_max), 0.5)  # (B, M, K)
    advantages = torch.zeros(b, m, k_max)  # (B, M, K)
    stats = dict.fromkeys(ROLLOUT_STATS, 0.0)
    policy_scales = mean_scale(
        out.alpha, out.beta, scale_min=cfg.scale_min, scale_max=cfg.scale_max
    ).cpu()  # (B, K)
    for i, prompt in enumerate(prompts):
        k = int(mask[i].sum())
        generator = torch.Generator().manual_seed(prompt_seed(seed, prompt.position, 0))
        alpha = out.alpha[i, :k].float().cpu().expand(m, k)  # (M, K_i)
        beta = out.beta[i, :k].float().cpu().expand(m, k)  # (M, K_i)
        draws, scales, _ = sample(
            alpha, beta, generator, scale_min=cfg.scale_min, scale_max=cfg.scale_max
        )  # (M, K_i) each
        scores, tokens, vanilla = score_allocations(
            pipeline,
            prompt,
            scales.double().numpy(),
            reward=reward,
            answers_per_rollout=answers_per_rollout,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=prompt_seed(seed, prompt.position, ANSWER_STREAM),
        )
        if cost == "tokens":
            costs = token_cost(tokens, vanilla)  # (M,)
        else:
            costs = scale_cost(scales, cfg.scale_min, cfg.scale_max)  # (M,)
        adv = capo_advantages(
            scores, costs, mode=advantage, correct_threshold=CORRECT_THRESHOLD
        )  # (M,)
        per_chunk = adv
        if advantage in PER_CHUNK_MODES:
            per_chunk = chunk_advantages(adv, scores, draws, ridge=credit_ridge)  # (M, K_i)
        if probe_credit:
            probes = _probe_rewards(pipeline, prompt, k, cfg, probe_cache, stats)  # (K_i,)
            per_chunk = probe_advantages(per_chunk, draws, probes, weight=probe_credit)
            stats["probe_gap"] += float(probes.max() - probes.mean())
        advantages[i, :, :k] = per_chunk if per_chunk.ndim == 2 else per_chunk[:, None]
        actions[i, :, :k] = draws
        stats["prompts"] += 1
        stats["rollouts"] += m
        stats["reward"] += float(scores.sum())
        stats["correct"] += float((scores > CORRECT_THRESHOLD).sum())
        stats["retention"] += float((tokens / vanilla).sum())
        stats["visual_tokens"] += float(tokens.sum())
        stats["scale_spread"] += float(scales.double().std(dim=1, unbiased=False).sum())
        stats["policy_spread"] += float(policy_scales[i, :k].double().std(unbiased=False))
        stats["advantage"] += float(adv.double().sum())
        stats["advantage_sq"] += float(adv.double().pow(2).sum())
    device = out.alpha.device
    actions = actions.to(device)
    old = log_prob(
        out.alpha[:, None].expand(b, m, k_max), out.beta[:, None].expand(b, m, k_max), actions
    )  # (B, M, K)
    return RolloutBatch(
        inputs=inputs,
        actions=actions,
        log_prob=old,
        advantages=advantages.to(device),
        chunk_mask=mask,
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
    scores, _, _ = score_allocations(
        pipeline,
        prompt,
        probe_scales(k, cfg.scale_min, cfg.scale_max),
        reward="logprob",
        answers_per_rollout=1,
        max_new_tokens=1,
        temperature=1.0,
        seed=0,
    )
    stats["probe_rows"] += k
    if cache is not None:
        cache[key] = scores
    return scores


VALIDATION_STATS = ("videos", "accuracy", "retention", "visual_tokens", "scale_spread")
"""Sums a validation pass reports (per-video sums after the count)."""


@torch.no_grad()
def validate(
    pipeline: Pipeline, allocator, prompts: list[Prompt], *, max_new_tokens: int, batch_size: int
) -> dict[str, float]:
    """The deterministic policy (Beta-mean scales) and greedy answers on ``prompts``: sums."""
    stats = dict.fromkeys(VALIDATION_STATS, 0.0)
    was_training = allocator.training
    allocator.eval()
    cfg = allocator.config
    backbone = pipeline.backbone
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        inputs = _contexts(pipeline, batch, allocator)
        out = allocator(**inputs)
        scales = mean_scale(
            out.alpha, out.beta, scale_min=cfg.scale_min, scale_max=cfg.scale_max
        ).cpu()  # (B, K)
        counts = inputs["chunk_mask"].sum(dim=1).tolist()  # (B,)
        allocations = [
            pipeline.allocate(p.video, p.request, scales=scales[i, :k].double().numpy())
            for i, (p, k) in enumerate(zip(batch, counts, strict=True))
        ]
        videos = [pipeline.chunked(p.video, a) for p, a in zip(batch, allocations, strict=True)]
        questions = [p.request.question for p in batch]
        answers: list[str] = [""] * len(batch)
        for index, inputs in backbone.batches(videos, questions):
            for b, answer in zip(index, backbone.generate(inputs, max_new_tokens), strict=True):
                answers[b] = answer
        for i, (p, a, answer) in enumerate(zip(batch, allocations, answers, strict=True)):
            ex = p.example
            stats["videos"] += 1
            stats["accuracy"] += grade(ex.problem_type, answer, ex.gold(), len(ex.options or []))
            stats["retention"] += sum(a.tokens) / a.vanilla_tokens
            stats["visual_tokens"] += sum(a.tokens)
            stats["scale_spread"] += float(scales[i, : counts[i]].double().std(unbiased=False))
    allocator.train(was_training)
    return stats


def mean_or_nan(total: float, count: float) -> float:
    return total / count if count else math.nan
