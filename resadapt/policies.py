"""Allocation policies: one scale per temporal chunk, chosen before the backbone sees any pixel.

Owns the policy interface, the registry (vanilla, uniform, random, content, learned, attention,
and the two peer families: keyframes and prune) and the tensors the learned allocator reads.
Knows nothing about budgets (see geometry.fit_budget and resadapt.pipeline) or about how the
backbone encodes the chunks (the attention probe asks resadapt.relevance; pruning is
resadapt.prune).

A policy's ``treatment`` says how the pipeline meets the budget with its output:
  * ``resize`` (every policy but two): the scales are fitted to the budget (geometry.fit_budget);
  * ``drop`` (keyframes, frame selection): the output ranks the chunks; the highest-ranked are kept
    at full resolution while the budget holds them and the others are not encoded at all;
  * ``prune`` (post-encoder pruning): every chunk is encoded at full resolution and the budget's
    number of visual tokens is kept after the vision tower (resadapt.prune).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np
import torch

from allocator import Allocator, AllocatorConfig, mean_scale
from resadapt import relevance
from resadapt.backbone import ChunkedVideo
from resadapt.errors import BudgetError, ChunkLimitError, PolicyError
from resadapt.geometry import uniform_step
from resadapt.prune import CONTEXTUAL_SHARE

if TYPE_CHECKING:
    from resadapt.backbone import Backbone
    from resadapt.video import SampledVideo

logger = logging.getLogger(__name__)

POLICY_NAMES = (
    "vanilla", "uniform", "random", "content", "learned", "attention", "keyframes", "prune"
)  # fmt: skip
TREATMENTS = ("resize", "drop", "prune")
"""How the pipeline meets a budget with a policy's output (see the module docstring)."""
THUMB_SIDE = AllocatorConfig.__dataclass_fields__["thumb_side"].default
"""Thumbnail side of the training-free policies: the allocator's default, so that one decoded
video's thumbnails serve every policy; a loaded allocator reads its own (``Learned.thumb_side``)."""
MIN_SCALE = 0.2
"""Lowest scale the training-free policies propose (the allocator's default s_min)."""
QUERY_HEAD_SHARE = 0.25
"""Share of the allocator's query window given to a long question's first tokens (the opening of
its stem); the rest holds its last tokens, where a multiple-choice prompt lists the options."""
PROBE_BUDGET = 0.1
"""Default visual tokens of the attention policy's probe pass, as a share of the full-resolution
tokens (every chunk at one size: the largest that fits, at least the smallest)."""
ATTENTION_QUERIES = "after_video"
"""Query positions the attention policy averages: every position after the video (with a real
Qwen template the question and the assistant cue; see resadapt.relevance.query_rows)."""
ATTENTION_SHARPNESS = 4.0
"""Exponent γ of the attention policy's map s_k = max(MIN_SCALE, (share_k / max share)^γ). A
layer-and-head mean keeps a diffuse floor on every chunk (why the trainer sharpens its attention
targets to share^(1/T)), so the ratios are sharpened the same way: γ = 1/T at the trainer's
default T = 0.25. Not tuned on real checkpoints."""
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""A Hugging Face hub id (owner/name)."""


@dataclass
class ProbeCost:
    """What a policy's own pass of the backbone cost (reported with the result)."""

    visual_tokens: int
    """Visual tokens the probe pass encoded."""
    seconds: float
    """Wall time of the probe: resizing, the processor and the (truncated) prefill."""


@dataclass
class AllocationContext:
    """What a policy may look at: cheap thumbnails of the sampled frames and the question; the
    decoded frames and the backbone for a policy that runs the backbone itself (``attention``)."""

    thumbs: np.ndarray
    """(T, S, S, 3) uint8 RGB thumbnails of the sampled frames."""
    timestamps: np.ndarray
    """(T,) seconds."""
    question: str
    frames_per_chunk: int = 2
    video: SampledVideo | None = None
    """The decoded frames at the base size (the pipeline always gives them)."""
    backbone: Backbone | None = None
    """The frozen backbone (the pipeline always gives it)."""
    probe: ProbeCost | None = None
    """Set by a policy that ran a probe pass of the backbone; None otherwise."""
    notes: list[str] = field(default_factory=list)
    """What a policy did not read in full (e.g. a question cut to the allocator's query window),
    one sentence each; the pipeline reports them in the result."""

    @property
    def num_chunks(self) -> int:
        return len(self.thumbs) // self.frames_per_chunk

    def chunked_thumbs(self) -> np.ndarray:
        """(K, F, S, S, 3) thumbnails grouped by chunk."""
        k, f = self.num_chunks, self.frames_per_chunk
        return self.thumbs[: k * f].reshape(k, f, *self.thumbs.shape[1:])

    def chunk_times(self) -> np.ndarray:
        """(K,) mid-time of every chunk in seconds."""
        k, f = self.num_chunks, self.frames_per_chunk
        return self.timestamps[: k * f].reshape(k, f).mean(axis=1)


class Policy(Protocol):
    name: str
    thumb_side: int
    """Side of the square thumbnails the policy reads, in pixels."""
    treatment: str
    """One of TREATMENTS (see the module docstring); ``resize`` unless a policy says otherwise."""

    def scales(self, ctx: AllocationContext) -> np.ndarray:
        """(K,) scales in (0, 1], one per chunk."""
        ...


@dataclass
class Vanilla:
    """Every chunk at full resolution: the reference the savings are measured against."""

    thumb_side = THUMB_SIDE

    name: str = "vanilla"

    def scales(self, ctx: AllocationContext) -> np.ndarray:
        return np.ones(ctx.num_chunks)


@dataclass
class Uniform:
    """One scale for every chunk ("FixedScale"): the strongest training-free baseline."""

    thumb_side = THUMB_SIDE

    scale: float = 0.5
    name: str = "uniform"

    def scales(self, ctx: AllocationContext) -> np.ndarray:
        return np.full(ctx.num_chunks, self.scale)


@dataclass
class Random:
    """Scales drawn uniformly from [MIN_SCALE, 1], seeded: the control for any learned signal."""

    thumb_side = THUMB_SIDE

    seed: int = 0
    name: str = "random"

    def scales(self, ctx: AllocationContext) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.uniform(MIN_SCALE, 1.0, ctx.num_chunks)


@dataclass
class Content:
    """Training-free and query-agnostic: more pixels for chunks with fine detail or new content.

    detail = mean |Laplacian| of the chunk's grey thumbnails; novelty = mean absolute difference
    from the previous chunk (the first chunk counts as fully novel). Both are rank-normalised to
    [0, 1] and averaged; scale = MIN_SCALE + (1 − MIN_SCALE) · score.
    """

    thumb_side = THUMB_SIDE

    name: str = "content"

    def scales(self, ctx: AllocationContext) -> np.ndarray:
        chunks = ctx.chunked_thumbs().astype(np.float32)  # (K, F, S, S, 3)
        grey = chunks.mean(axis=-1)  # (K, F, S, S)
        detail = np.array(
            [
                np.mean([np.abs(cv2.Laplacian(g, cv2.CV_32F)).mean() for g in frames])
                for frames in grey
            ]
        )  # (K,)
        novelty = np.ones(len(grey))
        if len(grey) > 1:
            novelty[1:] = np.abs(grey[1:] - grey[:-1]).mean(axis=(1, 2, 3))
            novelty[0] = novelty[1:].max()
        score = (_rank01(detail) + _rank01(novelty)) / 2
        return MIN_SCALE + (1 - MIN_SCALE) * score


@dataclass
class Attention:
    """Training-free and query-aware, for any checkpoint: the backbone's own attention to each chunk
    in a cheap first pass.

    The probe encodes every chunk at one low size (the largest whose K copies fit ``probe_budget``
    × the full-resolution tokens), through the first ``probe_layers`` layers of the language model
    (None: all), and measures share_k: the attention from the positions after the video
    (:data:`ATTENTION_QUERIES`) to chunk k's visual tokens over the attention to all visual tokens,
    mean over those positions, layers and heads (resadapt.relevance.chunk_attention). Scales:
    s_k = max(MIN_SCALE, (share_k / max_j share_j) ^ ATTENTION_SHARPNESS) — the most attended
    chunk gets 1.0; the budget is fitted afterwards as for every policy. The probe's tokens and
    time are reported in ``ctx.probe``.
    """

    thumb_side = THUMB_SIDE

    probe_budget: float = PROBE_BUDGET
    probe_layers: int | None = None
    name: str = "attention"

    def scales(self, ctx: AllocationContext) -> np.ndarray:
        return attention_scales(self.shares(ctx))

    def shares(self, ctx: AllocationContext) -> np.ndarray:
        """(K,) share of the probe's attention on every chunk, summing to 1; sets ``ctx.probe``."""
        if ctx.video is None or ctx.backbone is None:
            raise PolicyError(f"the {self.name} policy needs the decoded video and the backbone")
        start = time.perf_counter()
        backbone, video, k = ctx.backbone, ctx.video, ctx.num_chunks
        vanilla = k * backbone.geometry.tokens(*video.base_size)
        cap = math.floor(self.probe_budget * vanilla + 1e-9)
        step = uniform_step(backbone.geometry, *video.base_size, k, cap)
        probe_video = ChunkedVideo.from_frames(
            video.frames,
            video.timestamps,
            video.sample_fps,
            [(step.height, step.width)] * k,
            ctx.frames_per_chunk,
        )
        (shares,) = relevance.chunk_attention(
            backbone,
            [probe_video],
            [ctx.question],
            queries=ATTENTION_QUERIES,
            num_layers=self.probe_layers,
        )
        ctx.probe = ProbeCost(visual_tokens=k * step.tokens, seconds=time.perf_counter() - start)
        return shares.double().numpy()


@dataclass
class Keyframes(Attention):
    """Frame selection (the AKS / BOLT / Q-Frame family) on the attention policy's probe: the
    chunks the question attends to most are kept at full resolution, as many as the budget holds,
    and the others are dropped (never encoded; the kept chunks keep their true times).

    ``scales`` returns the ranking, share_k / max share in (0, 1]; the pipeline keeps the top
    chunks (treatment ``drop``). The same probe as ``attention``, so the two differ only in
    "downscale" against "drop".
    """

    name: str = "keyframes"
    treatment = "drop"

    def scales(self, ctx: AllocationContext) -> np.ndarray:
        shares = self.shares(ctx)
        return shares / max(float(shares.max()), 1e-12)


@dataclass
class Prune:
    """Post-encoder token pruning (VisionZip as ported to Qwen; resadapt.prune): every chunk at
    full resolution through the vision tower, then the budget's number of visual tokens kept by the
    attention they receive in the tower's last full-attention block, ``contextual_share`` of them
    as merged contextual tokens. The vision tower's cost is that of vanilla."""

    thumb_side = THUMB_SIDE
    treatment = "prune"

    contextual_share: float = CONTEXTUAL_SHARE
    name: str = "prune"

    def scales(self, ctx: AllocationContext) -> np.ndarray:
        return np.ones(ctx.num_chunks)


def treatment(policy: Policy) -> str:
    """How the pipeline meets a budget with ``policy``'s output (``resize`` by default)."""
    return getattr(policy, "treatment", "resize")


def attention_scales(shares: np.ndarray) -> np.ndarray:
    """(K,) shares → (K,) scales: max(MIN_SCALE, (share / max share) ^ ATTENTION_SHARPNESS)."""
    ratio = shares / max(float(shares.max()), 1e-12)  # (K,) in [0, 1], 1 at the top chunk
    return np.maximum(MIN_SCALE, ratio**ATTENTION_SHARPNESS)


def _rank01(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (ties share their mean rank); all-equal input gives 0.5."""
    if len(x) == 1 or np.ptp(x) == 0:
        return np.full(len(x), 0.5)
    order = np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)
    for v in np.unique(x):  # average tied ranks
        tie = x == v
        order[tie] = order[tie].mean()
    return order / (len(x) - 1)


def allocator_inputs(
    ctxs: list[AllocationContext], tokenizer, max_query_tokens: int, device="cpu"
) -> dict[str, torch.Tensor]:
    """Batch B contexts for the allocator, padding chunks and query tokens.

    Returns thumbs (B, K, F, 3, S, S) float in [0, 1], query_ids / query_mask (B, L),
    chunk_mask (B, K) bool and chunk_times (B, K) seconds. A question longer than the window is
    cut to its head and tail (:func:`query_window`), noted in its context's ``notes``.
    """
    k_max = max(c.num_chunks for c in ctxs)
    f = ctxs[0].frames_per_chunk
    s = ctxs[0].thumbs.shape[1]
    thumbs = torch.zeros(len(ctxs), k_max, f, 3, s, s)
    chunk_mask = torch.zeros(len(ctxs), k_max, dtype=torch.bool)
    chunk_times = torch.zeros(len(ctxs), k_max)
    for b, c in enumerate(ctxs):
        k = c.num_chunks
        t = torch.from_numpy(c.chunked_thumbs()).float().div(255)  # (K, F, S, S, 3)
        thumbs[b, :k] = t.permute(0, 1, 4, 2, 3)
        chunk_mask[b, :k] = True
        chunk_times[b, :k] = torch.from_numpy(c.chunk_times()).float()
    query_ids = torch.full((len(ctxs), max_query_tokens), tokenizer.pad_token_id)  # (B, L)
    query_mask = torch.zeros(len(ctxs), max_query_tokens, dtype=torch.bool)  # (B, L)
    for b, ids in enumerate(tokenizer([c.question for c in ctxs])["input_ids"]):
        if len(ids) > max_query_tokens:
            head = int(max_query_tokens * QUERY_HEAD_SHARE)
            ctxs[b].notes.append(
                f"the allocator read {max_query_tokens} of the question's {len(ids)} tokens: the "
                f"first {head} and the last {max_query_tokens - head}"
            )
        ids = torch.tensor(query_window(ids, max_query_tokens))
        span = slice(max_query_tokens - len(ids), None)
        if tokenizer.padding_side != "left":
            span = slice(0, len(ids))
        query_ids[b, span], query_mask[b, span] = ids, True
    return {
        "thumbs": thumbs.to(device),
        "query_ids": query_ids.to(device),
        "query_mask": query_mask.to(device),
        "chunk_mask": chunk_mask.to(device),
        "chunk_times": chunk_times.to(device),
    }


def query_window(ids: list[int], max_tokens: int) -> list[int]:
    """A question's token ids fitted to the allocator's window: all of them when they fit, else the
    first ``QUERY_HEAD_SHARE`` of the window and the last tokens for the rest (the stem's opening
    and the options, never silently only the head)."""
    if len(ids) <= max_tokens:
        return list(ids)
    head = int(max_tokens * QUERY_HEAD_SHARE)
    return list(ids[:head]) + list(ids[len(ids) - (max_tokens - head) :])


class Learned:
    """The trained allocator: Beta-mean scale per chunk (deterministic at inference)."""

    name = "learned"

    def __init__(self, allocator, tokenizer, *, path: str | None = None):
        self.allocator = allocator.eval()
        self.tokenizer = tokenizer
        self.path = path
        self.warning: str | None = None
        """Set when the allocator runs against a backbone it does not match (shown with results)."""

    @classmethod
    def load(
        cls,
        path: str | Path,
        tokenizer,
        backbone_model=None,
        check: Callable[[AllocatorConfig], None] | None = None,
    ) -> Learned:
        """Load an allocator: a local folder (config.json + model.safetensors) or a hub id.

        ``check`` sees the allocator's config before anything is wired to the backbone (e.g.
        resadapt.compat's compatibility check) and may raise.
        """
        check_allocator_path(str(path))
        try:
            alloc = Allocator.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            raise PolicyError(
                f"cannot load allocator {path}: {str(e).splitlines()[0] if str(e) else e!r}"
            ) from e
        if check is not None:
            check(alloc.config)
        if alloc.config.query_encoder == "backbone":
            if backbone_model is None:
                raise PolicyError(f"allocator {path} needs the backbone's input embeddings")
            alloc.set_query_embeddings(backbone_model.get_input_embeddings().weight)
        return cls(alloc, tokenizer, path=str(path))

    @property
    def thumb_side(self) -> int:
        return self.allocator.config.thumb_side

    def check_fit(self, frames_per_chunk: int) -> None:
        """Refuse a backbone whose chunks hold another number of frames than the allocator's."""
        check_fit(self.allocator.config, frames_per_chunk, f"allocator {self.path or '(unsaved)'}")

    @torch.no_grad()
    def scales(self, ctx: AllocationContext) -> np.ndarray:
        cfg = self.allocator.config
        if ctx.num_chunks > cfg.max_chunks:
            raise ChunkLimitError(
                f"the video was sampled into {ctx.num_chunks} chunks "
                f"({ctx.num_chunks * ctx.frames_per_chunk} frames); the allocator accepts at most "
                f"{cfg.max_chunks} ({cfg.max_chunks * ctx.frames_per_chunk} frames): lower "
                "--frames or --fps"
            )
        device = next(self.allocator.parameters()).device
        batch = allocator_inputs([ctx], self.tokenizer, cfg.max_query_tokens, device)
        for note in ctx.notes:
            logger.info("%s", note)
        out = self.allocator(**batch)
        scales = mean_scale(out.alpha, out.beta, scale_min=cfg.scale_min, scale_max=cfg.scale_max)
        return scales[0].cpu().numpy()  # (K,)


def check_allocator_path(path: str) -> None:
    """Raise PolicyError unless ``path`` is an allocator folder (with config.json) or a hub id."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise PolicyError(f"no allocator checkpoint at {path} (config.json is missing)")
    elif not HUB_ID.match(path):
        raise PolicyError(f"no allocator checkpoint at {path} (no such folder, and not a hub id)")


def check_fit(config: AllocatorConfig, frames_per_chunk: int, what: str) -> None:
    """Raise PolicyError when an allocator (``what``) reads chunks of another size than the
    backbone makes."""
    if config.frames_per_chunk != frames_per_chunk:
        raise PolicyError(
            f"{what} reads chunks of {config.frames_per_chunk} frames but the backbone makes "
            f"chunks of {frames_per_chunk}"
        )


def make_policy(
    name: str,
    *,
    scale: float = 0.5,
    seed: int = 0,
    learned: Learned | None = None,
    probe_budget: float = PROBE_BUDGET,
    probe_layers: int | None = None,
    contextual_share: float = CONTEXTUAL_SHARE,
) -> Policy:
    """A policy by name; ``learned`` needs a loaded :class:`Learned`."""
    if name == "vanilla":
        return Vanilla()
    if name == "uniform":
        if not 0 < scale <= 1:
            raise BudgetError(f"--scale must be in (0, 1], got {scale}")
        return Uniform(scale)
    if name == "random":
        return Random(seed)
    if name == "content":
        return Content()
    if name == "learned":
        if learned is None:
            raise PolicyError("the learned policy needs an allocator checkpoint (--allocator PATH)")
        return learned
    if name == "attention":
        return Attention(probe_budget, probe_layers)
    if name == "keyframes":
        return Keyframes(probe_budget, probe_layers)
    if name == "prune":
        return Prune(contextual_share)
    raise PolicyError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
