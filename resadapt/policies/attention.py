"""The attention policies: the backbone's own attention from the question to each chunk, read in a
cheap low-resolution probe pass; ``attention`` resizes by it, ``keyframes`` selects by it.

Owns the probe pass and the map from attention shares to scales. Knows nothing about how attention
is recorded (resadapt.relevance) or how the budget is met (the policies' operators).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from resadapt import heads as needle
from resadapt import relevance
from resadapt.errors import PolicyError
from resadapt.policies.base import (
    MIN_SCALE,
    PROBE_BUDGET,
    AllocationContext,
    InApp,
    Policy,
    PolicyOptions,
    ProbeCost,
    register_policy,
)
from resadapt.policies.operators import SELECT
from resadapt.probe import model_depth, probe_features, probe_video

ATTENTION_QUERIES = "after_video"
"""Query positions the attention policy averages: every position after the video (with a real
Qwen template the question and the assistant cue; see resadapt.relevance.query_rows)."""
ATTENTION_SHARPNESS = 4.0
"""Exponent γ of the attention policy's map s_k = max(MIN_SCALE, (share_k / max share)^γ). A
layer-and-head mean keeps a diffuse floor on every chunk (why the trainer sharpens its attention
targets to share^(1/T)), so the ratios are sharpened the same way: γ = 1/T at the trainer's
default T = 0.25. Not tuned on real checkpoints."""


@register_policy
@dataclass
class Attention(Policy):
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

    When the needle test (resadapt.needle) has stored a choice of layers and heads beside the
    checkpoint, share_k is the mean over those heads instead (the probe runs only as deep as the
    deepest of them), and the result's notes name them.
    """

    name = "attention"
    description = "training-free, query-aware probe"
    runs_probe = True
    app = InApp(20)

    probe_budget: float = PROBE_BUDGET
    probe_layers: int | None = None

    @classmethod
    def from_options(cls, options: PolicyOptions) -> Attention:
        return cls(options.probe_budget, options.probe_layers)

    def scales(self, ctx: AllocationContext) -> np.ndarray:
        return attention_scales(self.shares(ctx))

    def shares(self, ctx: AllocationContext) -> np.ndarray:
        """(K,) share of the probe's attention on every chunk, summing to 1; sets ``ctx.probe``."""
        if ctx.video is None or ctx.backbone is None:
            raise PolicyError(f"the {self.name} policy needs the decoded video and the backbone")
        start = time.perf_counter()
        choice = needle.lookup(ctx.backbone)
        if choice is not None and (
            self.probe_layers is None or self.probe_layers >= choice.deepest_layer
        ):
            return self._needle_shares(ctx, choice, start)
        if choice is not None:
            ctx.notes.append(
                f"--probe-layers {self.probe_layers} stops before the needle-found heads (layer "
                f"{choice.deepest_layer - 1}); the mean of the first {self.probe_layers} layers "
                "was read instead"
            )
        low = probe_video(ctx.backbone, ctx.video, ctx.frames_per_chunk, self.probe_budget)
        (shares,) = relevance.chunk_attention(
            ctx.backbone,
            [low],
            [ctx.question],
            queries=ATTENTION_QUERIES,
            num_layers=self.probe_layers,
        )
        tokens = sum(ctx.backbone.geometry.tokens(c.shape[1], c.shape[2]) for c in low.chunks)
        ctx.probe = ProbeCost(visual_tokens=tokens, seconds=time.perf_counter() - start)
        return shares.double().numpy()

    def _needle_shares(
        self, ctx: AllocationContext, choice: needle.NeedleChoice, start: float
    ) -> np.ndarray:
        """(K,) mean share of the needle-found heads, the probe run only as deep as they are."""
        depth = min(choice.deepest_layer, model_depth(ctx.backbone))
        f = probe_features(
            ctx.backbone,
            ctx.video,
            ctx.question,
            ctx.frames_per_chunk,
            probe_budget=self.probe_budget,
            num_layers=depth,
        )
        heads = ctx.backbone.model.config.text_config.num_attention_heads
        shares = f.attention[:, choice.columns(depth, heads)].double().mean(dim=1)  # (K,)
        ctx.probe = ProbeCost(visual_tokens=f.visual_tokens, seconds=time.perf_counter() - start)
        ctx.notes.append(choice.describe())
        return (shares / shares.sum()).numpy()


@register_policy
@dataclass
class Keyframes(Attention):
    """Frame selection (the AKS / BOLT / Q-Frame family) on the attention policy's probe: the
    chunks the question attends to most are kept at full resolution, as many as the budget holds,
    and the others are dropped (never encoded; the kept chunks keep their true times).

    ``scales`` returns the ranking, share_k / max share in (0, 1]; the ``select`` operator keeps
    the top chunks. The same probe as ``attention``, so the two differ only in "downscale" against
    "drop".
    """

    name = "keyframes"
    description = "frame selection: drop the least-attended chunks"
    operator = SELECT
    app = InApp(30, compared=True)

    def scales(self, ctx: AllocationContext) -> np.ndarray:
        shares = self.shares(ctx)
        return shares / max(float(shares.max()), 1e-12)


def attention_scales(shares: np.ndarray) -> np.ndarray:
    """(K,) shares → (K,) scales: max(MIN_SCALE, (share / max share) ^ ATTENTION_SHARPNESS)."""
    ratio = shares / max(float(shares.max()), 1e-12)  # (K,) in [0, 1], 1 at the top chunk
    return np.maximum(MIN_SCALE, ratio**ATTENTION_SHARPNESS)
