"""Scale → size → visual tokens, and fitting per-chunk scales to a token budget.

Pure integer geometry in one place. It knows the backbone only through a :class:`Geometry` (factor
and pixel bounds read from the model's config); it knows nothing about decoding, models or policies.

Invariants of :func:`smart_resize` (same rules as qwen-vl-utils and transformers' Qwen processors):
  1. both sides are divisible by ``factor`` (patch size × spatial merge size: 28 for Qwen2.5-VL,
     32 for Qwen3-VL);
  2. ``min_pixels <= h * w <= max_pixels`` (as far as one factor step allows);
  3. the aspect ratio is kept as closely as rounding to the factor allows.
Visual tokens of one temporal chunk are ``(h // factor) * (w // factor)``: every frame pair of a
chunk shares one size and yields one temporal patch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from resadapt.errors import BudgetError

MAX_ASPECT_RATIO = 200
"""Largest long-side / short-side ratio the Qwen processors accept."""


def smart_resize(
    height: float, width: float, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """(h, w) divisible by ``factor`` with ``min_pixels <= h*w <= max_pixels``, aspect kept."""
    if min(height, width) <= 0:
        raise BudgetError(f"a frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise BudgetError(
            f"aspect ratio {max(height, width) / min(height, width):.0f} exceeds {MAX_ASPECT_RATIO}"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class Geometry:
    """The backbone's spatial-temporal token grid, read from its config."""

    factor: int
    """Pixels per merged visual token side: patch_size × spatial_merge_size."""
    min_pixels: int
    """Smallest frame area a chunk may be resized to (at least one token)."""
    max_pixels: int
    """Per-frame pixel cap: the base (full-resolution, scale 1.0) size of every frame."""
    frames_per_chunk: int = 2
    """Frames per temporal patch (temporal_patch_size): the frames of a chunk share one size."""

    def __post_init__(self) -> None:
        if self.factor <= 0 or self.frames_per_chunk <= 0:
            raise ValueError(f"factor and frames_per_chunk must be positive, got {self}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(
                f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}"
            )

    def base_size(self, height: int, width: int) -> tuple[int, int]:
        """Full-resolution size of a source frame: the backbone's own per-frame resize.

        Applied until it is a fixed point (``scaled_size(base, 1.0) == base``); one pass already is,
        except on extreme aspect ratios where the one-factor minimum side breaks the pixel cap.
        """
        size = smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
        for _ in range(8):
            again = smart_resize(*size, self.factor, self.min_pixels, self.max_pixels)
            if again == size:
                break
            size = again
        return size

    def scaled_size(self, base_height: int, base_width: int, scale: float) -> tuple[int, int]:
        """Size of a chunk whose sides are ``scale`` × the base size (scale 1.0 gives the base)."""
        if not scale > 0:
            raise BudgetError(f"a scale must be positive, got {scale}")
        # Unrounded sides: the min-pixels clamp then keeps the base aspect ratio at any scale.
        return smart_resize(
            base_height * scale, base_width * scale, self.factor, self.min_pixels, self.max_pixels
        )

    def tokens(self, height: int, width: int) -> int:
        """Visual tokens of one chunk (one temporal patch) at ``height`` × ``width``."""
        assert height % self.factor == 0 and width % self.factor == 0, (height, width)
        return (height // self.factor) * (width // self.factor)


@dataclass(frozen=True)
class Step:
    """One rung of a frame's size ladder."""

    start: float
    """Smallest probed scale at which this rung begins (requested scales map to rungs by it)."""
    scale: float
    """Largest probed scale still giving this size: the scale reported for a chunk on this rung."""
    height: int
    width: int
    tokens: int


def size_ladder(geometry: Geometry, base_height: int, base_width: int) -> list[Step]:
    """The distinct sizes reachable for scales in (0, 1], with strictly increasing tokens.

    A size only changes where ``round(side * scale / factor)`` changes or a pixel bound starts to
    bind, so probing just below and just above every half-step of either side finds them all.
    ``smart_resize`` is not monotone where the min-pixels clamp meets rounding (a slightly larger
    scale can give fewer tokens); such sizes are left out, so every rung costs more than the last
    and the top rung is the base size (scale 1.0).
    Invariant: ``geometry.scaled_size(base, step.scale) == (step.height, step.width)``.
    """
    f = geometry.factor
    probes = {1e-6, 1.0}
    for side in (base_height, base_width):
        for n in range(0, int(side // f) + 2):
            s = (n + 0.5) * f / side
            if s < 1.0:
                probes.update((math.nextafter(s, 0.0), math.nextafter(s, 2.0)))
    runs: list[list] = []  # [start, last, h, w] per run of equal sizes
    for s in sorted(probes):
        hw = geometry.scaled_size(base_height, base_width, s)
        if runs and tuple(runs[-1][2:]) == hw:
            runs[-1][1] = s
        else:
            runs.append([s, s, *hw])
    base_h, base_w = runs[-1][2:]  # the run that holds scale 1.0
    base_tokens = geometry.tokens(base_h, base_w)
    steps: list[Step] = []
    for start, last, h, w in runs[:-1]:
        tokens = geometry.tokens(h, w)
        # The min-pixels clamp rounds both sides up, so on extreme aspect ratios a tiny scale can
        # cost as much as the base size or more: such rungs are never useful.
        if (steps and tokens <= steps[-1].tokens) or tokens >= base_tokens:
            continue
        steps.append(Step(start=start, scale=last, height=h, width=w, tokens=tokens))
    steps.append(
        Step(start=runs[-1][0], scale=1.0, height=base_h, width=base_w, tokens=base_tokens)
    )
    return steps


def fit_budget(
    scales: np.ndarray,
    geometry: Geometry,
    base_height: int,
    base_width: int,
    max_tokens: int,
    *,
    fill: bool = True,
) -> np.ndarray:
    """Adjust per-chunk scales (K,) so that their tokens fit ``max_tokens``; return the new (K,).

    ``fill`` False makes the budget a ceiling only: scales that fit are kept (snapped to their
    rungs) and scales that do not are lowered by one common multiplier; the third rule below does
    not apply.

    Contract (property-tested):
      * the total never exceeds ``max_tokens`` (a hard ceiling);
      * the policy's order is kept: if ``scales[i] > scales[j]`` then ``out[i] >= out[j]``;
      * the budget is used: no chunk can be raised one rung without breaking the ceiling or the
        order, which gives >= 90 % use whenever rungs are small next to the budget;
      * every returned scale is a rung's scale, so ``Geometry.scaled_size`` gives that rung's size.

    Raises BudgetError when even the smallest size for every chunk exceeds the budget.
    """
    scales = np.asarray(scales, dtype=np.float64)  # (K,)
    assert scales.ndim == 1 and len(scales) > 0
    ladder = size_ladder(geometry, base_height, base_width)
    starts = np.array([st.start for st in ladder])
    tokens_of = np.array([st.tokens for st in ladder])
    floor_tokens = int(tokens_of[0]) * len(scales)
    if max_tokens < floor_tokens:
        raise BudgetError(
            f"a budget of {max_tokens} visual tokens is below the minimum of {floor_tokens} "
            f"({len(scales)} chunks at the smallest size); raise the budget or sample fewer frames"
        )
    pref = np.clip(scales, 1e-6, 1.0)

    def levels_at(lam: float) -> np.ndarray:  # (K,) rung index of each chunk at multiplier lam
        wanted = np.minimum(1.0, lam * pref)
        return np.maximum(0, np.searchsorted(starts, wanted, side="right") - 1)

    # 1. One common multiplier keeps every ratio: the largest that fits (the spend is monotone).
    lo, hi = 0.0, 1.0 / pref.min() if fill else 1.0
    if tokens_of[levels_at(hi)].sum() <= max_tokens:
        lo = hi
    else:
        for _ in range(60):
            mid = (lo + hi) / 2
            if tokens_of[levels_at(mid)].sum() <= max_tokens:
                lo = mid
            else:
                hi = mid
    levels = levels_at(lo)
    if not fill:
        return np.array([ladder[level].scale for level in levels])
    # 2. Spend what is left one rung at a time, most preferred chunks first, never overtaking a
    #    chunk the policy prefers strictly more.
    order = np.argsort(-pref, kind="stable")
    spent = int(tokens_of[levels].sum())
    changed = True
    while changed:
        changed = False
        for i in order:
            nxt = levels[i] + 1
            if nxt >= len(ladder) or spent + tokens_of[nxt] - tokens_of[levels[i]] > max_tokens:
                continue
            preferred = pref > pref[i]
            if preferred.any() and levels[preferred].min() < nxt:
                continue
            spent += int(tokens_of[nxt] - tokens_of[levels[i]])
            levels[i] = nxt
            changed = True
    return np.array([ladder[level].scale for level in levels])


def uniform_step(
    geometry: Geometry, base_height: int, base_width: int, num_chunks: int, max_tokens: int
) -> Step:
    """The largest rung at which all ``num_chunks`` chunks fit ``max_tokens`` together at one size,
    or the smallest rung when none does (a probe always runs; its cost is reported, not capped)."""
    assert num_chunks >= 1, num_chunks
    ladder = size_ladder(geometry, base_height, base_width)
    fitting = [step for step in ladder if step.tokens * num_chunks <= max_tokens]
    return fitting[-1] if fitting else ladder[0]


def keep_top_chunks(
    ranks: np.ndarray,
    geometry: Geometry,
    base_h: int,
    base_w: int,
    cap: int | None,
    policy: str = "keyframes",
) -> np.ndarray:
    """Frame selection under a visual-token cap: (K,) ranks → (K,) scales, 1.0 for the
    highest-ranked chunks while their full-resolution tokens fit ``cap`` (all without a cap), 0.0
    (dropped) for the others. Refuses a cap below one full-resolution chunk (BudgetError)."""
    full = geometry.tokens(*geometry.scaled_size(base_h, base_w, 1.0))
    count = len(ranks) if cap is None else min(len(ranks), cap // full)
    if count < 1:
        raise BudgetError(
            f"{policy} keeps whole chunks at full resolution ({full} visual tokens each); a cap of "
            f"{cap} visual tokens cannot hold one"
        )
    order = np.argsort(-ranks, kind="stable")  # ties: the earlier chunk first
    scales = np.zeros(len(ranks))
    scales[order[:count]] = 1.0
    return scales
