"""The records of one answered question: the per-chunk allocation and the public result.

Owns ``Allocation`` (the policy's decisions after budget fitting: sizes, tokens, what was dropped
or pruned, the probe's cost) and ``Result`` (the JSON contract of ``resadapt.ask --json`` and the
app's ``/answer``). Knows nothing about how either is computed (resadapt.pipeline).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from resadapt import prune
from resadapt.policies import ProbeCost


@dataclass
class Allocation:
    """Per-chunk decisions for one decoded video (K chunks of F frames)."""

    scales: np.ndarray
    """(K,) scale of every chunk after budget fitting."""
    sizes: list[tuple[int, int]]
    """K (height, width) sizes on the backbone's factor."""
    tokens: list[int]
    """K visual-token counts."""
    vanilla_tokens: int
    """Tokens of the same frames at scale 1.0."""
    probe: ProbeCost | None = None
    """What the policy's own backbone pass cost (attention policy), else None."""
    notes: list[str] = field(default_factory=list)
    """What the policy did not read in full, one sentence each (``AllocationContext.notes``)."""
    pruned_to: int | None = None
    """Post-encoder pruning (``prune``): visual tokens kept after the vision tower, else None."""
    contextual_share: float = prune.CONTEXTUAL_SHARE
    """``prune``: share of the kept tokens that are contextual tokens."""
    kept_tokens: list[int] | None = None
    """``prune``, once the tower has run: the K kept visual tokens per chunk."""

    @property
    def kept(self) -> list[bool]:
        """(K,) whether chunk k is encoded at all (``keyframes`` drops chunks: 0 tokens)."""
        return [t > 0 for t in self.tokens]

    @property
    def encoded_tokens(self) -> int:
        """Visual tokens through the vision tower."""
        return int(sum(self.tokens))

    @property
    def visual_tokens(self) -> int:
        """Visual tokens that reach the language model."""
        return self.encoded_tokens if self.pruned_to is None else self.pruned_to

    @property
    def chunk_tokens(self) -> list[int]:
        """(K,) visual tokens of every chunk that reach the language model (before pruning runs,
        a pruned allocation reports its encoded tokens)."""
        return self.kept_tokens if self.kept_tokens is not None else list(self.tokens)

    @property
    def probe_visual_tokens(self) -> int:
        """Visual tokens of the policy's probe pass (0 without one)."""
        return self.probe.visual_tokens if self.probe is not None else 0

    @property
    def probe_s(self) -> float:
        """Seconds of the policy's probe pass (part of the allocation time; 0 without one)."""
        return self.probe.seconds if self.probe is not None else 0.0


@dataclass
class Result:
    """The answer and where the budget went; ``to_json`` is the public JSON contract."""

    answer: str
    backbone: str
    policy: str
    frames: list[dict]
    chunks: list[dict]
    visual_tokens: int
    vanilla_visual_tokens: int
    retention: float
    encoded_visual_tokens: int = 0
    """Visual tokens through the vision tower: visual_tokens, except for ``prune`` (every chunk at
    full resolution, then pruned to visual_tokens)."""
    probe_visual_tokens: int = 0
    """Visual tokens the policy's probe pass encoded (attention policy; 0 for the others): the
    full cost of the answer is visual_tokens + probe_visual_tokens."""
    allocator_warning: str | None = None
    """Set when the learned policy ran an allocator against a backbone it does not match."""
    notes: list[str] = field(default_factory=list)
    """What the policy did not read in full, one sentence each (e.g. a question longer than the
    allocator's query window); empty when it read everything."""
    timings: dict[str, float] = field(default_factory=dict)
    """decode_s, allocate_s (which includes probe_s), probe_s, backbone_s (which includes
    tower_s), tower_s (``prune``: the vision tower at full resolution and the token scoring; 0
    otherwise, where the tower runs inside the prefill), total_s."""

    def to_json(self) -> dict:
        return asdict(self)
