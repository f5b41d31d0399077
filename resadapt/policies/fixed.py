"""The policies that read nothing: vanilla (the reference), uniform (one scale) and random (seeded).

Owns those three classes. Knows nothing about the video's content or the question.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resadapt.errors import BudgetError
from resadapt.policies.base import (
    MIN_SCALE,
    AllocationContext,
    InApp,
    Policy,
    PolicyOptions,
    register_policy,
)


@register_policy
@dataclass
class Vanilla(Policy):
    """Every chunk at full resolution: the reference the savings are measured against (the budget
    does not apply)."""

    name = "vanilla"
    description = "full resolution"
    capped = False
    app = InApp(80, compared=True)

    def scales(self, ctx: AllocationContext) -> np.ndarray:
        return np.ones(ctx.num_chunks)


@register_policy
@dataclass
class Uniform(Policy):
    """One scale for every chunk ("FixedScale"): the strongest training-free baseline."""

    name = "uniform"
    description = "one scale"
    app = InApp(70, compared=True)

    scale: float = 0.5

    @classmethod
    def from_options(cls, options: PolicyOptions) -> Uniform:
        if not 0 < options.scale <= 1:
            raise BudgetError(f"--scale must be in (0, 1], got {options.scale}")
        return cls(options.scale)

    def scales(self, ctx: AllocationContext) -> np.ndarray:
        return np.full(ctx.num_chunks, self.scale)


@register_policy
@dataclass
class Random(Policy):
    """Scales drawn uniformly from [MIN_SCALE, 1], seeded: the control for any learned signal."""

    name = "random"
    description = "seeded random scales: the control for any learned signal"
    app = None  # a control for experiments, not a choice for users

    seed: int = 0

    @classmethod
    def from_options(cls, options: PolicyOptions) -> Random:
        return cls(options.seed)

    def scales(self, ctx: AllocationContext) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.uniform(MIN_SCALE, 1.0, ctx.num_chunks)
