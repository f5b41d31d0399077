"""The content policy: training-free and query-agnostic, more pixels where the thumbnails show
detail or change.

Owns the detail and novelty scores of the thumbnails. Knows nothing about the question or the
backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from resadapt.policies.base import MIN_SCALE, AllocationContext, InApp, Policy, register_policy


@register_policy
@dataclass
class Content(Policy):
    """Training-free and query-agnostic: more pixels for chunks with fine detail or new content.

    detail = mean |Laplacian| of the chunk's grey thumbnails; novelty = mean absolute difference
    from the previous chunk (the first chunk counts as fully novel). Both are rank-normalised to
    [0, 1] and averaged; scale = MIN_SCALE + (1 − MIN_SCALE) · score.
    """

    name = "content"
    description = "training-free"
    app = InApp(60)

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


def _rank01(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (ties share their mean rank); all-equal input gives 0.5."""
    if len(x) == 1 or np.ptp(x) == 0:
        return np.full(len(x), 0.5)
    order = np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)
    for v in np.unique(x):  # average tied ranks
        tie = x == v
        order[tie] = order[tie].mean()
    return order / (len(x) - 1)
