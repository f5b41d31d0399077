"""The prune policy: post-encoder token pruning (the VisionZip family), every chunk at full
resolution through the vision tower and the budget's number of visual tokens kept after it.

Owns the policy class. Knows nothing about how tokens are scored and merged (resadapt.prune).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resadapt.policies.base import AllocationContext, InApp, Policy, PolicyOptions, register_policy
from resadapt.policies.operators import PRUNE
from resadapt.prune import CONTEXTUAL_SHARE


@register_policy
@dataclass
class Prune(Policy):
    """Post-encoder token pruning (VisionZip as ported to Qwen; resadapt.prune): every chunk at
    full resolution through the vision tower, then the budget's number of visual tokens kept by the
    attention they receive in the tower's last full-attention block, ``contextual_share`` of them
    as merged contextual tokens. The vision tower's cost is that of vanilla."""

    name = "prune"
    description = "full-resolution tower, then keep the most-attended tokens"
    operator = PRUNE
    app = InApp(40, compared=True)

    contextual_share: float = CONTEXTUAL_SHARE

    @classmethod
    def from_options(cls, options: PolicyOptions) -> Prune:
        return cls(options.contextual_share)

    def scales(self, ctx: AllocationContext) -> np.ndarray:
        return np.ones(ctx.num_chunks)
