"""Operators: how a policy's per-chunk scores become what the backbone sees, and how each meets a
visual-token cap.

Owns the three operators, ``resize`` (one scale per chunk), ``select`` (keep the top chunks at full
resolution, drop the rest) and ``prune`` (every chunk at full resolution, then the cap's number of
visual tokens kept after the vision tower). Knows nothing about policies or their names (a policy
names one operator; resadapt.policies.base), about pixels (resadapt.geometry) or about how tokens
are pruned (resadapt.prune).

Letters: K chunks.
"""

from __future__ import annotations

import numpy as np

from resadapt.errors import BudgetError
from resadapt.geometry import Geometry, fit_budget, keep_top_chunks

Fitted = tuple[np.ndarray, int | None]
"""(K,) scales after fitting (0.0: a dropped chunk), and the visual tokens kept after the vision
tower (None: no pruning)."""


class Operator:
    """Turns (K,) scores in (0, 1] into what the backbone sees under an optional token cap."""

    name: str = ""
    """The operator's name (issue 25 composes policies as ``scorer+operator``)."""
    full_size_tower: bool = False
    """Whether the vision tower encodes every chunk at full resolution whatever the cap (its time
    is then reported as ``tower_s``)."""

    def fit(
        self,
        scores: np.ndarray,
        geometry: Geometry,
        base_h: int,
        base_w: int,
        cap: int | None,
        policy: str,
        fill: bool = True,
    ) -> Fitted:
        """(K,) scores → (K,) scales and the pruned token count, within ``cap`` visual tokens
        (None: no cap). ``policy`` names the caller in a refusal (BudgetError, one sentence).
        ``fill`` False: the cap is a ceiling only (resize does not raise the scores to use it)."""
        raise NotImplementedError


class ResizeChunks(Operator):
    """One scale per chunk; under a cap the scales are fitted to it (geometry.fit_budget)."""

    name = "resize"

    def fit(self, scores, geometry, base_h, base_w, cap, policy, fill=True) -> Fitted:
        if cap is None:
            return scores, None
        return fit_budget(scores, geometry, base_h, base_w, cap, fill=fill), None


class SelectChunks(Operator):
    """Frame selection: the highest-scored chunks at full resolution while the cap holds them, the
    others dropped (geometry.keep_top_chunks; a cap below one full chunk is refused)."""

    name = "select"

    def fit(self, scores, geometry, base_h, base_w, cap, policy, fill=True) -> Fitted:
        return keep_top_chunks(scores, geometry, base_h, base_w, cap, policy), None


class PruneTokens(Operator):
    """Post-encoder pruning: every chunk at full resolution; min(cap, full-resolution tokens) visual
    tokens reach the language model (all of them without a cap; a cap below one is refused)."""

    name = "prune"
    full_size_tower = True

    def fit(self, scores, geometry, base_h, base_w, cap, policy, fill=True) -> Fitted:
        vanilla = len(scores) * geometry.tokens(base_h, base_w)
        pruned_to = min(cap, vanilla) if cap is not None else vanilla
        if pruned_to < 1:
            raise BudgetError(f"a cap of {cap} visual tokens leaves {policy} nothing to keep")
        return np.ones(len(scores)), pruned_to


RESIZE = ResizeChunks()
SELECT = SelectChunks()
PRUNE = PruneTokens()
