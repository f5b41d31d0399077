"""How long one app request may hold a ZeroGPU GPU: a duration sized from the request.

Owns the estimate ``app.py`` hands to ``spaces.GPU(duration=...)`` (called with the request's own
arguments) and its bounds. The estimate grows with the frames sampled, the share of their
full-resolution tokens encoded (the budget, plus a probe pass), the longest answer and the number
of policies run; it stays within [MIN_GPU_SECONDS, MAX_GPU_SECONDS]. Knows nothing about gradio or
the ``spaces`` package, and never raises: an unreadable video is sized at the most frames (the
request itself then fails with its one sentence).
"""

from __future__ import annotations

import math

from resadapt.errors import ResAdaptError
from resadapt.policies import PROBE_BUDGET
from resadapt.video import MAX_SAMPLED_FRAMES, container_duration

MIN_GPU_SECONDS = 10
"""Shortest duration asked for, in seconds (a short request still loads inputs onto the GPU)."""
MAX_GPU_SECONDS = 120
"""Longest duration asked for, in seconds. ZeroGPU refuses a call longer than the caller's
allowance and queues long calls behind short ones; its own default is 60 s."""
BASE_GPU_SECONDS = 6.0
"""Fixed part of one call, in seconds: moving the inputs, the processor, the first decoding step."""
SECONDS_PER_FULL_FRAME = 0.05
"""Encoding and prefill of one sampled frame at full resolution, in seconds (an upper estimate
for a 7B-8B Qwen-VL on a ZeroGPU GPU)."""
SECONDS_PER_NEW_TOKEN = 0.06
"""One decoding step, in seconds."""
PROBE_POLICIES = ("attention", "keyframes")
"""Policies that run a low-resolution probe pass of the backbone before answering."""
FULL_TOWER_POLICIES = ("prune",)
"""Policies whose vision tower encodes every frame at full resolution whatever the budget."""


def sampled_frames(path: str | None, num_frames: float | None, fps: float | None) -> int:
    """Frames a request samples: ``num_frames`` when set, else ``fps`` × the header's duration,
    at most MAX_SAMPLED_FRAMES (the most when the header has no duration or does not open)."""
    if num_frames:
        return max(1, min(int(num_frames), MAX_SAMPLED_FRAMES))
    try:
        duration_s = container_duration(path) if path else None
    except ResAdaptError:
        duration_s = None
    if duration_s is None or not fps or fps <= 0:
        return MAX_SAMPLED_FRAMES
    return max(1, min(math.ceil(duration_s * fps), MAX_SAMPLED_FRAMES))


def gpu_seconds(
    frames: int,
    retention: float | None,
    max_new_tokens: float | None,
    policy: str | None,
    probe_budget: float = PROBE_BUDGET,
    runs: int = 1,
) -> int:
    """Seconds to ask ZeroGPU for: ``runs`` answers over ``frames`` frames at ``retention`` (None
    or 0: full resolution) of their tokens, with ``policy``'s probe or full tower, each up to
    ``max_new_tokens``; rounded up and clipped to [MIN_GPU_SECONDS, MAX_GPU_SECONDS]."""
    share = 1.0 if not retention else min(float(retention), 1.0)
    if policy in PROBE_POLICIES:
        share += probe_budget
    if policy in FULL_TOWER_POLICIES:
        share = max(share, 1.0)
    tokens = float(max_new_tokens or 0)
    one = frames * share * SECONDS_PER_FULL_FRAME + tokens * SECONDS_PER_NEW_TOKEN
    seconds = math.ceil(BASE_GPU_SECONDS + max(runs, 1) * one)
    return int(min(max(seconds, MIN_GPU_SECONDS), MAX_GPU_SECONDS))


def request_seconds(
    path: str | None,
    policy: str | None,
    budget: float | None,
    num_frames: float | None,
    fps: float | None,
    max_new_tokens: float | None,
    runs: int = 1,
) -> int:
    """:func:`gpu_seconds` of an app request given as its widget values (0 or None: not set)."""
    frames = sampled_frames(path, num_frames, fps)
    return gpu_seconds(frames, budget, max_new_tokens, policy, runs=runs)
