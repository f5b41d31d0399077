"""The probe pass: a frozen VLM reads every chunk at one low size with the question, and what the
allocator's probe head reads from it (per-chunk attention shares per layer and head, pooled hidden
states, the question's own states).

Owns the low-size copy of a video, the features of one pass and their cache by (video, question).
Knows nothing about the head that reads them (allocator.encoders.ProbeEncoder) or about how
attention rows are recorded (resadapt.relevance).

Letters: K chunks, R layers read, H heads, Q query rows, L prompt tokens, W hidden width,
A = 2 × R × H attention features (rows after the video, then the answer position).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from resadapt import relevance
from resadapt.backbone import Backbone, ChunkedVideo
from resadapt.geometry import uniform_step
from resadapt.video import SampledVideo


@dataclass
class ProbeCost:
    """What a policy's own pass of the backbone cost (reported with the result)."""

    visual_tokens: int
    """Visual tokens the probe pass encoded."""
    seconds: float
    """Wall time of the probe: resizing, the processor and the (truncated) prefill."""


@dataclass
class ProbeFeatures:
    """What one probe pass gives the head for one (video, question)."""

    attention: torch.Tensor
    """(K, A) share of each query row group's attention to visual tokens falling on every chunk,
    per layer and head: the first R × H columns from the rows after the video (mean), the last
    R × H from the answer position; each column sums to 1 over the K chunks."""
    hidden: torch.Tensor
    """(K, R, W) mean hidden state of each chunk's visual tokens after each layer read."""
    query: torch.Tensor
    """(R, W) mean hidden state of the positions after the video after each layer read."""
    visual_tokens: int
    """Visual tokens the probe encoded."""
    seconds: float
    """Wall time of the probe (resizing, the processor, the truncated prefill)."""


def probe_video(
    backbone: Backbone, video: SampledVideo, frames_per_chunk: int, probe_budget: float
) -> ChunkedVideo:
    """Every chunk of ``video`` at one low size: the largest whose K copies fit ``probe_budget`` ×
    the full-resolution tokens (the smallest when none does)."""
    k = len(video.frames) // frames_per_chunk
    vanilla = k * backbone.geometry.tokens(*video.base_size)
    cap = math.floor(probe_budget * vanilla + 1e-9)
    step = uniform_step(backbone.geometry, *video.base_size, k, cap)
    return ChunkedVideo.from_frames(
        video.frames,
        video.timestamps,
        video.sample_fps,
        [(step.height, step.width)] * k,
        frames_per_chunk,
    )


@contextlib.contextmanager
def _hidden_states(model, num_layers: int) -> Iterator[list[torch.Tensor]]:
    """Within the block, the outputs (B, L, W) of the language model's first ``num_layers``
    decoder layers are appended to the yielded list, in order."""
    states: list[torch.Tensor] = []

    def keep(module, args, output) -> None:
        states.append(output[0] if isinstance(output, tuple) else output)

    handles = [
        layer.register_forward_hook(keep) for layer in relevance.text_layers(model)[:num_layers]
    ]
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()


def model_depth(backbone: Backbone) -> int:
    """Decoder layers of the backbone's language model."""
    return len(relevance.text_layers(backbone.model))


@torch.no_grad()
def probe_features(
    backbone: Backbone,
    video: SampledVideo,
    question: str,
    frames_per_chunk: int,
    *,
    probe_budget: float,
    num_layers: int,
) -> ProbeFeatures:
    """One probe pass through the first ``num_layers`` layers of ``backbone`` (the whole model is
    never run deeper than the head reads); see :class:`ProbeFeatures`."""
    start = time.perf_counter()
    depth = model_depth(backbone)
    assert 1 <= num_layers <= depth, (num_layers, depth)
    low = probe_video(backbone, video, frames_per_chunk, probe_budget)
    inputs = backbone.prepare([low], [question])
    is_video = (inputs["input_ids"] == backbone.model.config.video_token_id).cpu()  # (1, L)
    chosen = relevance.query_rows(is_video, inputs["attention_mask"].bool().cpu(), "after_video")
    q = chosen.shape[1]
    with (
        relevance.recording(backbone.model, q) as rows,
        _hidden_states(backbone.model, num_layers) as states,
    ):
        with relevance.stop_after(backbone.model, num_layers):
            backbone.model(**inputs, logits_to_keep=1)
    weights = torch.stack(rows[:num_layers])[:, 0].float().cpu()  # (R, H, Q, L)
    rows_w = chosen[0].float() / chosen[0].sum()  # (Q,)
    after = torch.einsum("q,rhql->rhl", rows_w, weights)  # (R, H, L)
    last = weights[:, :, -1]  # (R, H, L) the answer position
    k = len(low.chunks)
    counts = torch.tensor(backbone.chunk_tokens(inputs))  # (K,)
    owner = torch.repeat_interleave(torch.arange(k), counts)  # (N,) chunk of each visual token
    visual = is_video[0]  # (L,)

    def chunk_shares(w: torch.Tensor) -> torch.Tensor:  # (R, H, L) → (K, R·H)
        v = w[..., visual]  # (R, H, N)
        mass = torch.zeros(*v.shape[:2], k).index_add_(2, owner, v)  # (R, H, K)
        mass = mass / mass.sum(dim=2, keepdim=True).clamp_min(1e-12)
        return mass.reshape(-1, k).T  # (K, R·H)

    attention = torch.cat([chunk_shares(after), chunk_shares(last)], dim=1)  # (K, A)
    hidden = torch.stack(states[:num_layers])[:, 0].float().cpu()  # (R, L, W)
    per_chunk = torch.zeros(k, hidden.shape[0], hidden.shape[2])  # (K, R, W)
    per_chunk.index_add_(0, owner, hidden[:, visual].transpose(0, 1))
    per_chunk /= counts[:, None, None].float()
    tail = hidden[:, -q:][:, chosen[0]].mean(dim=1)  # (R, W)
    return ProbeFeatures(
        attention=attention,
        hidden=per_chunk,
        query=tail,
        visual_tokens=int(counts.sum()),
        seconds=time.perf_counter() - start,
    )


class FeatureCache:
    """Probe features by (video, question, chunks): the probe VLM is frozen, so a (video, question)
    met again in another rollout or epoch costs no pass (in memory only)."""

    def __init__(self) -> None:
        self._features: dict[tuple[str, str, int], ProbeFeatures] = {}
        self.passes = 0
        """Probe passes run (cache misses)."""

    def get(self, key: tuple[str, str, int], compute) -> ProbeFeatures:
        """The cached features of ``key``, or ``compute()``'s, stored."""
        if key not in self._features:
            self._features[key] = compute()
            self.passes += 1
        return self._features[key]


def stack_features(
    features: list[ProbeFeatures], k_max: int, device="cpu"
) -> dict[str, torch.Tensor]:
    """The allocator's probe inputs for B videos, padded to ``k_max`` chunks: probe_attention
    (B, K, A), probe_hidden (B, K, R, W), probe_query (B, R, W)."""
    b = len(features)
    first = features[0]
    attention = torch.zeros(b, k_max, first.attention.shape[1])
    hidden = torch.zeros(b, k_max, *first.hidden.shape[1:])
    for i, f in enumerate(features):
        k = len(f.attention)
        attention[i, :k], hidden[i, :k] = f.attention, f.hidden
    query = torch.stack([f.query for f in features])
    return {
        "probe_attention": attention.to(device),
        "probe_hidden": hidden.to(device),
        "probe_query": query.to(device),
    }


def top_chunk(features: ProbeFeatures) -> np.ndarray:
    """(A,) the chunk each attention feature ranks first (the needle test's vote)."""
    return features.attention.argmax(dim=0).numpy()
