"""Video decoding and frame sampling: backends, seeking, true timestamps, rotation, bad-file errors.

Knows the backbone only through a Geometry (base size, frames per chunk); not models or budgets.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from resadapt.decoders import (
    VIDEO_BACKENDS,
    DecoderError,
    DecodeTimeout,
    header_duration,
    open_container,
    video_stream,
)
from resadapt.errors import BudgetError, ResAdaptError, VideoError
from resadapt.geometry import Geometry

logger = logging.getLogger(__name__)

# Shapes: T sampled frames, N any frames, H W pixels. Memory is bounded by the sampled frames: only
# the sampled indices are decoded (by seeking), each straight into the preallocated (T, H, W, 3)
# array at the base size; the whole file is never decoded.

BACKEND_ORDER = ("pyav", "torchcodec", "decord")
"""Backends tried in turn when none is forced, in the order ``python -m benchmarks.decode`` ranks
them (all three return the same frames; the ranking: docs/results.md, "Decoding"). The next one
takes over when a backend fails on a file with its own decoder error or times out (logged). PyAV's
errors are final (it reads every container exactly; the others use the same FFmpeg)."""
DECODE_TIMEOUT_S = 120.0
"""Longest one backend may take to open a file and decode its sampled frames before the next one
takes over (decord can hang without an error). A hung decoder thread is abandoned, not killed."""
MAX_SAMPLED_FRAMES = 768
"""Most frames one video may be sampled to (qwen-vl-utils' FPS_MAX_FRAMES)."""
MAX_SAMPLE_FPS = 120.0
"""Highest sampling rate accepted, frames per second."""
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass
class SampledVideo:
    """The sampled frames of one video at the base size, with where and when each came from."""

    frames: np.ndarray
    """(T, H, W, 3) uint8 RGB, upright, at ``geometry.base_size`` of the source."""
    timestamps: np.ndarray
    """(T,) float64 seconds from the stream start, from the container's presentation times."""
    indices: np.ndarray
    """(T,) int64 source frame index of each sampled frame (the last repeats on short videos)."""
    source_fps: float
    """Average frame rate of the source stream."""
    total_frames: int
    """Frames in the source stream."""
    duration_s: float
    """Length of the source stream in seconds (start of the first frame to end of the last)."""
    source_size: tuple[int, int]
    """(height, width) of an upright source frame (after rotation metadata)."""
    backend: str
    """Name of the backend that decoded the frames."""
    path: str
    """The file the frames came from."""
    _thumbs: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def thumbs(self, side: int) -> np.ndarray:
        """(T, side, side, 3) thumbnails of the sampled frames, made once per side and kept: every
        policy and budget that looks at this video reads the same ones (no second decode)."""
        if side not in self._thumbs:
            self._thumbs[side] = thumbnails(self.frames, side)
        return self._thumbs[side]

    @property
    def sample_fps(self) -> float:
        """True sampling rate: (T - 1) / (last - first timestamp), else the source rate."""
        span = float(self.timestamps[-1] - self.timestamps[0]) if len(self.timestamps) else 0.0
        if len(self.timestamps) > 1 and span > 0:
            return (len(self.timestamps) - 1) / span
        return self.source_fps

    @property
    def base_size(self) -> tuple[int, int]:
        """(H, W) of every sampled frame."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def _check_count(name: str, value: int, low: int, high: int) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not low <= value <= high
    ):
        raise BudgetError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def check_sampling(
    fps: float | None, num_frames: int | None, min_frames: int, max_frames: int
) -> None:
    """Raise BudgetError naming the bad value and its allowed range."""
    if num_frames is not None:
        _check_count("num_frames", num_frames, 1, MAX_SAMPLED_FRAMES)
    elif fps is None:
        raise BudgetError("give fps (frames per second) or num_frames (a frame count), got neither")
    elif isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps <= MAX_SAMPLE_FPS:
        raise BudgetError(f"fps must be in (0, {MAX_SAMPLE_FPS:g}], got {fps!r}")
    _check_count("min_frames", min_frames, 1, MAX_SAMPLED_FRAMES)
    _check_count("max_frames", max_frames, 1, MAX_SAMPLED_FRAMES)
    if min_frames > max_frames:
        raise BudgetError(f"min_frames ({min_frames}) must not exceed max_frames ({max_frames})")


def sample_indices(
    total_frames: int,
    source_fps: float,
    *,
    fps: float | None = 2.0,
    num_frames: int | None = None,
    min_frames: int = 4,
    max_frames: int = 64,
    frames_per_chunk: int = 2,
) -> np.ndarray:
    """Source frame indices (T,) int64 to sample, like qwen-vl-utils' ``smart_nframes``.

    * ``num_frames`` given: T = num_frames rounded half up to a multiple of ``frames_per_chunk``.
    * else by rate: T = total / source_fps * fps, clamped to [min_frames, max_frames] (rounded in
      to multiples of ``frames_per_chunk``) and to ``total_frames``, then floored to a multiple.
    T is at least ``frames_per_chunk``. Indices are ``round(linspace(0, total - 1, ·))`` over the
    frames the video has; when it has fewer than T, the last index repeats so T stays a multiple.
    """
    f = frames_per_chunk
    assert total_frames > 0 and source_fps > 0 and f > 0
    if num_frames is not None:
        count = math.floor(num_frames / f + 0.5) * f
    else:
        low = math.ceil(min_frames / f) * f
        high = math.floor(max_frames / f) * f
        wanted = total_frames / source_fps * fps
        count = math.floor(min(max(wanted, low), high, total_frames) / f) * f
    count = max(f, count)
    real = min(count, total_frames)
    idx = np.round(np.linspace(0, total_frames - 1, real)).astype(np.int64)  # (real,)
    return np.concatenate([idx, np.full(count - real, idx[-1], np.int64)])  # (T,)


# ---------------------------------------------------------------------------------------- resizing
def _interpolation(src: tuple[int, int], dst: tuple[int, int]) -> int:
    return cv2.INTER_AREA if dst[0] * dst[1] < src[0] * src[1] else cv2.INTER_CUBIC


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One (h, w, 3) frame to (H, W, 3) = ``size``: INTER_AREA shrinking, INTER_CUBIC growing."""
    if frame.shape[:2] == tuple(size):
        return frame
    return cv2.resize(
        frame, (size[1], size[0]), interpolation=_interpolation(frame.shape[:2], size)
    )


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (N, h, w, 3) uint8 frames to (N, H, W, 3), ``size`` = (H, W); same array if equal.

    This is the allocation's resize (a chunk to its allocated size), so it is the one the Qwen
    processors apply themselves: bicubic with antialiasing (torchvision's). A box filter such as
    cv2.INTER_AREA aliases fine texture into coarser patterns instead of removing it, so a
    downscaled chunk would still show detail it cannot resolve.
    """
    assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8, frames.shape
    height, width = int(size[0]), int(size[1])
    if frames.shape[1:3] == (height, width):
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (N, 3, h, w)
    y = torch.nn.functional.interpolate(
        x, size=(height, width), mode="bicubic", antialias=True, align_corners=False
    )
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def thumbnails(frames: np.ndarray, side: int = 64) -> np.ndarray:
    """The allocator's cheap view: (T, H, W, 3) uint8 frames squashed to (T, S, S, 3), S = side."""
    assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8, frames.shape
    if side <= 0:
        raise ValueError(f"thumbnail side must be positive, got {side}")
    out = np.empty((len(frames), side, side, 3), np.uint8)  # (T, S, S, 3)
    for i, frame in enumerate(frames):
        out[i] = cv2.resize(frame, (side, side), interpolation=cv2.INTER_AREA)
    return out


# ---------------------------------------------------------------------------------------- loading
def _check_path(path: str | os.PathLike) -> str:
    if not isinstance(path, str | os.PathLike):
        raise VideoError(f"a video path must be a string, got {type(path).__name__}")
    text = os.fspath(path)
    if _URL.match(text):
        raise VideoError(f"{text} is a URL; only local files are accepted")
    file = Path(text)
    if not file.exists():
        raise VideoError(f"{text} does not exist")
    if file.is_dir():
        raise VideoError(f"{text} is a directory, not a video file")
    if not file.is_file():
        raise VideoError(f"{text} is not a regular file")
    if file.stat().st_size == 0:
        raise VideoError(f"{text} is empty (0 bytes)")
    if not os.access(file, os.R_OK):
        raise VideoError(f"{text} cannot be read (permission denied)")
    return text


def _decode(
    path: str, backend: str, geometry: Geometry, sampling: dict[str, float | int | None]
) -> SampledVideo:
    start = time.perf_counter()
    source = VIDEO_BACKENDS[backend](path)
    try:
        info = source.info
        indices = sample_indices(
            info.total_frames, info.fps, frames_per_chunk=geometry.frames_per_chunk, **sampling
        )  # (T,)
        unique, inverse = np.unique(indices, return_inverse=True)  # (U,), (T,)
        base_h, base_w = geometry.base_size(*info.size)
        frames = np.empty((len(indices), base_h, base_w, 3), np.uint8)  # (T, H, W, 3)
        timestamps = np.empty(len(indices), np.float64)  # (T,)
        for u, (frame, seconds) in enumerate(source.read(unique)):
            assert frame.shape[:2] == info.size, (frame.shape, info.size)
            rows = np.flatnonzero(inverse == u)
            frames[rows] = _resize(frame, (base_h, base_w))
            timestamps[rows] = seconds
    finally:
        source.close()
    logger.info(
        "%s served %s: %d of %d frames, %dx%d -> %dx%d, %.3f s",
        backend, path, len(indices), info.total_frames, *info.size, base_h, base_w,
        time.perf_counter() - start,
    )  # fmt: skip
    return SampledVideo(
        frames=frames,
        timestamps=timestamps,
        indices=indices,
        source_fps=info.fps,
        total_frames=info.total_frames,
        duration_s=info.duration_s,
        source_size=info.size,
        backend=backend,
        path=path,
    )


def container_duration(path: str | os.PathLike) -> float | None:
    """The video stream's (else the container's) duration in seconds from the file's header,
    without decoding a frame; None when the header has none. Raises VideoError for a bad path or a
    file that does not open as a video."""
    path = _check_path(path)
    container = open_container(path)
    try:
        return header_duration(container, video_stream(path, container))
    finally:
        container.close()


def _bounded(path: str, backend: str, timeout_s: float, decode: Callable[[], SampledVideo]):
    """``decode()`` in a daemon thread; DecodeTimeout when it runs past ``timeout_s`` (the thread
    is abandoned: Python cannot stop it). Its own exceptions are re-raised here."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["video"] = decode()
        except BaseException as e:  # handed to the caller as is
            outcome["error"] = e

    thread = threading.Thread(target=run, name=f"decode {backend}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise DecodeTimeout(
            backend, f"{backend} did not finish decoding {path} within {timeout_s:g} s"
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["video"]


def load_video(
    path: str | os.PathLike,
    *,
    geometry: Geometry,
    fps: float | None = 2.0,
    num_frames: int | None = None,
    min_frames: int = 4,
    max_frames: int = 64,
    backend: str | None = None,
    timeout_s: float | None = None,
) -> SampledVideo:
    """Sample a local video once: T upright frames at ``geometry.base_size``, true timestamps.

    ``num_frames``, when given, takes precedence over ``fps``; ``min_frames``/``max_frames`` bound
    the rate rule only (see :func:`sample_indices`). ``backend`` forces one of VIDEO_BACKENDS;
    by default the installed ones are tried in BACKEND_ORDER, the next taking over when one fails
    on the file with its own decoder error or runs past ``timeout_s`` (default DECODE_TIMEOUT_S),
    logged. Raises VideoError (bad path or file, or every backend failed) or BudgetError (bad
    sampling values), one sentence each.
    """
    check_sampling(fps, num_frames, min_frames, max_frames)
    if backend is not None and backend not in VIDEO_BACKENDS:
        raise ResAdaptError(
            f"unknown video backend {backend!r}; choose one of {sorted(VIDEO_BACKENDS)}"
        )
    path = _check_path(path)
    sampling = dict(fps=fps, num_frames=num_frames, min_frames=min_frames, max_frames=max_frames)
    timeout_s = DECODE_TIMEOUT_S if timeout_s is None else timeout_s
    order = [backend] if backend is not None else [b for b in BACKEND_ORDER if b in VIDEO_BACKENDS]
    for n, name in enumerate(order):
        try:
            return _bounded(
                path, name, timeout_s, lambda name=name: _decode(path, name, geometry, sampling)
            )
        except DecoderError as e:
            if n + 1 == len(order):
                raise
            logger.warning("%s failed on %s (%s); trying %s", e.backend, path, e, order[n + 1])
    raise AssertionError("unreachable: the last backend returns or raises")
