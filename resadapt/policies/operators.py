"""Operators: how a policy's per-chunk scores become what the backbone sees, and how each meets a
visual-token cap.

Owns the three operators, ``resize`` (one scale per chunk), ``select`` (keep the top chunks, at full
resolution or at their own scale, and drop the rest) and ``prune`` (every chunk at full resolution,
then the cap's number of visual tokens kept after the vision tower), and ``prune`` composed after
resize or select (:class:`PruneAfter`: the tower spends an encode cap, the language model gets the
cap). Knows nothing about policies or their names (a policy names its operators;
resadapt.policies.base, resadapt.policies.compose), about pixels (resadapt.geometry) or about how
tokens are pruned (resadapt.prune).

Letters: K chunks.
"""

from __future__ import annotations

import numpy as np

from resadapt.errors import BudgetError
from resadapt.geometry import Geometry, fit_budget, keep_top_chunks, size_ladder

Fitted = tuple[np.ndarray, int | None]
"""(K,) scales after fitting (0.0: a dropped chunk), and the visual tokens kept after the vision
tower (None: no pruning)."""
SELECT_SIZES = ("full", "own")
"""What ``select`` does with the chunks it keeps (the paper's two variants): ``full`` keeps the
top chunks at full resolution, as many as the cap holds; ``own`` keeps the chunks scored at least
:data:`SELECT_THRESHOLD` × the top score, at their own scales fitted to the cap."""
SELECT_THRESHOLD = 0.5
"""``select`` with own sizes: the share of the top score a chunk needs to be kept."""


class Operator:
    """Turns (K,) scores in (0, 1] into what the backbone sees under an optional token cap."""

    name: str = ""
    """The operator's name (issue 25 composes policies as ``scorer+operator``)."""
    full_size_tower: bool = False
    """Whether the vision tower encodes every chunk at full resolution whatever the cap."""
    prunes: bool = False
    """Whether the tower's output is pruned to the cap (its time is then reported as
    ``tower_s``)."""
    spends_encode_cap: bool = False
    """Whether the tower spends the encode cap (resize or select, then prune)."""

    def fit(
        self,
        scores: np.ndarray,
        geometry: Geometry,
        base_h: int,
        base_w: int,
        cap: int | None,
        policy: str,
        encode_cap: int | None = None,
        fill: bool = True,
    ) -> Fitted:
        """(K,) scores → (K,) scales and the pruned token count, within ``cap`` visual tokens
        (None: no cap). ``encode_cap``: the tokens the tower may encode when the operator prunes
        after it (None: ``cap``); the others ignore it. ``policy`` names the caller in a refusal
        (BudgetError, one sentence). ``fill`` False: the cap is a ceiling only (resize does not
        raise the scores to use it)."""
        raise NotImplementedError


class ResizeChunks(Operator):
    """One scale per chunk; under a cap the scales are fitted to it (geometry.fit_budget)."""

    name = "resize"

    def fit(
        self, scores, geometry, base_h, base_w, cap, policy, encode_cap=None, fill=True
    ) -> Fitted:
        if cap is None:
            return scores, None
        return fit_budget(scores, geometry, base_h, base_w, cap, fill=fill), None


class SelectChunks(Operator):
    """Frame selection. ``sizes="full"``: the highest-scored chunks at full resolution while the cap
    holds them, the others dropped (geometry.keep_top_chunks; a cap below one full chunk is
    refused). ``sizes="own"``: the chunks scored at least SELECT_THRESHOLD × the top score keep
    their own scales, fitted to the cap over the kept chunks alone (geometry.fit_budget); when they
    do not fit at the smallest size, the lowest-scored of them are dropped too."""

    name = "select"

    def __init__(self, sizes: str = "full"):
        assert sizes in SELECT_SIZES, sizes
        self.sizes = sizes

    def fit(
        self, scores, geometry, base_h, base_w, cap, policy, encode_cap=None, fill=True
    ) -> Fitted:
        if self.sizes == "full":
            return keep_top_chunks(scores, geometry, base_h, base_w, cap, policy), None
        order = np.argsort(-scores, kind="stable")  # ties: the earlier chunk first
        count = int((scores >= SELECT_THRESHOLD * scores.max()).sum())
        if cap is not None:
            smallest = size_ladder(geometry, base_h, base_w)[0].tokens
            count = min(count, cap // smallest)
            if count < 1:
                raise BudgetError(
                    f"{policy} keeps whole chunks ({smallest} visual tokens each at the smallest "
                    f"size); a cap of {cap} visual tokens cannot hold one"
                )
        kept = order[:count]
        scales = np.zeros(len(scores))
        own = scores[kept]
        scales[kept] = own if cap is None else fit_budget(own, geometry, base_h, base_w, cap)
        return scales, None


class PruneTokens(Operator):
    """Post-encoder pruning: every chunk at full resolution; min(cap, full-resolution tokens) visual
    tokens reach the language model (all of them without a cap; a cap below one is refused)."""

    name = "prune"
    full_size_tower = True
    prunes = True

    def fit(
        self, scores, geometry, base_h, base_w, cap, policy, encode_cap=None, fill=True
    ) -> Fitted:
        vanilla = len(scores) * geometry.tokens(base_h, base_w)
        pruned_to = min(cap, vanilla) if cap is not None else vanilla
        if pruned_to < 1:
            raise BudgetError(f"a cap of {cap} visual tokens leaves {policy} nothing to keep")
        return np.ones(len(scores)), pruned_to


class PruneAfter(Operator):
    """``resize`` or ``select`` under the encode cap, then post-encoder pruning of what the tower
    encoded to the cap (all of it when it already fits, or without a cap). The encode cap is never
    below the cap (the tower encodes at least what reaches the language model)."""

    prunes = True
    spends_encode_cap = True

    def __init__(self, first: Operator):
        assert not first.prunes, first.name
        self.first = first
        self.name = f"{first.name}+prune"

    def fit(
        self, scores, geometry, base_h, base_w, cap, policy, encode_cap=None, fill=True
    ) -> Fitted:
        spend = cap if cap is None or encode_cap is None else max(cap, encode_cap)
        scales, _ = self.first.fit(scores, geometry, base_h, base_w, spend, policy, fill=fill)
        encoded = sum(
            geometry.tokens(*geometry.scaled_size(base_h, base_w, s)) for s in scales if s
        )
        pruned_to = encoded if cap is None else min(cap, encoded)
        return scales, pruned_to


RESIZE = ResizeChunks()
SELECT = SelectChunks()
PRUNE = PruneTokens()
