"""Training clips of the tiny backbone's recipe: a synthetic sample sampled as a decoder would hand
it over, with random chunk scales and per-token targets, resized exactly as the pipeline resizes.

Owns ``Clip`` and how one is made (``make_clip``); the recipe (resadapt.world.recipe) owns the
stages, losses, training loop and the config whose knobs shape a clip (:class:`ClipMix`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from resadapt.backbone import Backbone, ChunkedVideo
from resadapt.config import Request
from resadapt.data import Example
from resadapt.pipeline import Pipeline
from resadapt.video import SampledVideo, sample_indices
from resadapt.world.synth import (
    FRAMES_PER_CHUNK,
    Sample,
    generate_sample,
    part_of,
    token_labels,
)


class ClipMix(Protocol):
    """The knobs of the recipe's config (``recipe.BackboneTrainConfig``) that shape a clip."""

    card_px: int
    scale_mix: float
    min_scale: float
    uniform_mix: float
    long_mix: float


def example_of(sample: Sample) -> Example:
    return Example(
        video="",
        question=sample.question,
        answer=sample.answer,
        problem_type=sample.problem_type,
        options=list(sample.options) if sample.options else None,
    )


@dataclass
class Clip:
    """One training clip: the sampled frames, the chunk scales and per-token targets."""

    sample: Sample
    video: SampledVideo
    """The sampled frames as the pipeline holds a decoded video."""
    scales: np.ndarray  # (K,)
    colour_ids: np.ndarray  # (K, H/f, W/f) int64
    label_ids: np.ndarray  # (K, H/f, W/f) int64

    @property
    def frames(self) -> np.ndarray:
        return self.video.frames  # (T, H, W, 3) uint8

    @property
    def present(self) -> np.ndarray:
        """(K,) bool: chunk k shows a card (in either of its sampled frames), at any size."""
        shown = {t for card in self.sample.cards for t in card.frames}
        indices = np.asarray(self.video.indices).reshape(-1, FRAMES_PER_CHUNK)  # (K, 2)
        return np.array([any(int(t) in shown for t in pair) for pair in indices])


def sampled(sample: Sample, indices: np.ndarray) -> SampledVideo:
    """The frames ``indices`` (T,) of an in-memory sample, as a decoder would hand them over."""
    total, height, width, _ = sample.frames.shape
    return SampledVideo(
        frames=sample.frames[indices],
        timestamps=indices / sample.fps,
        indices=indices,
        source_fps=sample.fps,
        total_frames=total,
        duration_s=total / sample.fps,
        source_size=(height, width),
        backend="synth",
        path=f"synth:{sample.seed}",
    )


def make_clip(
    seed: int,
    cfg: ClipMix,
    chunks: int,
    cards: int,
    rng: np.random.Generator,
    factor: int,
    size: int,
    task: str = "main",
) -> Clip:
    """A sample of ``task`` (a mixture: its part at ``seed``) at ``chunks`` chunks with random
    scales; a main-task sample is maybe sampled from 2× frames (a count sample never is: two
    cards would share a chunk)."""
    task = part_of(task, seed)
    frames_out = chunks * FRAMES_PER_CHUNK
    long = task == "main" and rng.random() < cfg.long_mix and chunks > 1
    source = frames_out * (2 if long else 1)
    cards = None if task == "count" else min(cards, source // 2)  # count: 2-5 cards, its own
    sample = generate_sample(
        seed, task=task, num_frames=source, num_cards=cards, size=size, card_px=cfg.card_px
    )
    idx = sample_indices(source, sample.fps, num_frames=frames_out)  # (T,)
    colour_ids, label_ids = token_labels(sample, factor, idx)  # (K, H/f, W/f) each
    scales = np.where(
        rng.random(chunks) < cfg.scale_mix, rng.uniform(cfg.min_scale, 1.0, chunks), 1.0
    )  # (K,)
    if cfg.uniform_mix and rng.random() < cfg.uniform_mix:  # no draw when off: old runs replay
        # squared, so that about a quarter of these clips are at the smallest sizes (1 token)
        scales[:] = cfg.min_scale + (1.0 - cfg.min_scale) * rng.random() ** 2
    return Clip(sample, sampled(sample, idx), scales, colour_ids, label_ids)


def chunked_video(
    backbone: Backbone, clip: Clip, scales: np.ndarray, retention: float | None = None
) -> ChunkedVideo:
    """The clip's chunks at ``scales`` (fitted to ``retention`` if given), resized by the pipeline
    exactly as it resizes a decoded video."""
    pipeline = Pipeline(backbone)
    request = Request(question=clip.sample.question, policy="uniform", budget=retention)
    allocation = pipeline.allocate(clip.video, request, scales=scales)
    return pipeline.chunked(clip.video, allocation)
