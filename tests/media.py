"""Real video files for tests, written with PyAV (H.264, yuv420p) into a directory the test owns.

Owns the test fixtures' pixel code: frame ``i`` shows ``i`` as a row of black/white cells that
:func:`frame_index` reads back after decoding and resizing. Knows nothing about ResAdapt itself.
"""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np

CELLS = 10
"""Cells in the top band: a white start marker, INDEX_BITS bits (MSB first), a black end marker."""
INDEX_BITS = 8
"""Bits of the frame index drawn into each frame, so indices up to 255 are readable."""
VFR_TIME_BASE = fractions.Fraction(1, 1000)
"""Time base of variable-frame-rate files: pts are in milliseconds."""
AUDIO_RATE = 16000
"""Sample rate of the audio-only files."""


def draw_frame(index: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Upright RGB frame (H, W, 3) uint8 that shows ``index`` in its top band and grey level."""
    rng = np.random.default_rng(seed * 100_003 + index)
    grey = 40 + (index * 7) % 160
    frame = np.full((height, width, 3), grey, np.uint8)  # (H, W, 3)
    frame[height // 2 :] = rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)  # coloured lower half
    bits = [1] + [(index >> (INDEX_BITS - 1 - b)) & 1 for b in range(INDEX_BITS)] + [0]
    band = height // 4
    for c, bit in enumerate(bits):
        x0, x1 = c * width // CELLS, (c + 1) * width // CELLS
        frame[:band, x0:x1] = 235 if bit else 16
    return frame


def frame_index(frame: np.ndarray) -> int:
    """Read the index drawn by :func:`draw_frame` from a decoded, possibly resized frame (H, W, 3).

    Returns -1 when the markers are not where an upright frame has them (e.g. a rotated frame).
    """
    height, width = frame.shape[:2]
    luma = frame.astype(np.float32).mean(axis=2)  # (H, W)
    band = height // 4
    values = []
    for c in range(CELLS):
        x0, x1 = c * width // CELLS, (c + 1) * width // CELLS
        pad_x, pad_y = max(1, (x1 - x0) // 4), max(1, band // 4)
        values.append(luma[pad_y : band - pad_y, x0 + pad_x : x1 - pad_x].mean())
    bits = [int(v > 128) for v in values]
    if bits[0] != 1 or bits[-1] != 0:
        return -1
    return int("".join(map(str, bits[1:-1])), 2)


def vfr_pts(num_frames: int, fps: float, seed: int = 0) -> np.ndarray:
    """Irregular presentation times (N,) in VFR_TIME_BASE units: gaps of 0.4, 1 or 2.5 frames."""
    rng = np.random.default_rng(seed)
    step = 1.0 / fps / float(VFR_TIME_BASE)
    gaps = np.round(step * rng.choice([0.4, 1.0, 2.5], size=num_frames - 1)).astype(np.int64)
    return np.concatenate([[0], np.cumsum(gaps)]).astype(np.int64)


def write_video(
    path: str | Path,
    *,
    num_frames: int = 30,
    fps: int = 10,
    height: int = 96,
    width: int = 128,
    rotate: int | None = None,
    vfr: bool = False,
    audio_only: bool = False,
    seed: int = 0,
    codec: str = "libx264",
    faststart: bool = False,
) -> Path:
    """Write a real H.264 (yuv420p) video whose frame ``i`` shows ``i``; return its path.

    ``height`` × ``width`` is the size a player displays. ``rotate`` (0/90/180/270) is the legacy
    "rotate" tag: degrees a player turns the stored frames clockwise. The stored frames are turned
    the other way and a display matrix is written, so an upright decode shows :func:`draw_frame`.
    ``vfr`` writes irregular pts (see :func:`vfr_pts`); ``audio_only`` writes an AAC track and no
    video stream. ``codec`` picks another PyAV encoder (e.g. "libsvtav1", which decord 0.6 cannot
    read); ``faststart`` puts the MP4 index before the media data, as streaming sites do.
    """
    path = Path(path)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        if audio_only:
            _write_audio(container, seconds=num_frames / fps)
            return path
        turns = (rotate or 0) // 90 % 4
        if (rotate or 0) % 90:
            raise ValueError(f"rotate must be a multiple of 90, got {rotate}")
        stored_h, stored_w = (width, height) if turns % 2 else (height, width)
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = stored_w, stored_h, "yuv420p"
        if codec == "libx264":  # B-frames on, so presentation order differs from decode order
            stream.options = {"g": "8", "crf": "18", "preset": "veryfast"}
        elif codec == "libsvtav1":
            stream.options = {"preset": "12", "crf": "20"}
        if turns:
            stream.set_display_rotation(-90 * turns)  # counter-clockwise degrees
        if vfr:
            stream.codec_context.time_base = VFR_TIME_BASE
            pts = vfr_pts(num_frames, fps, seed)
        for i in range(num_frames):
            upright = draw_frame(i, height, width, seed)
            stored = np.ascontiguousarray(np.rot90(upright, k=turns))  # k turns counter-clockwise
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            if vfr:
                frame.pts, frame.time_base = int(pts[i]), VFR_TIME_BASE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _write_audio(container: av.container.OutputContainer, seconds: float) -> None:
    stream = container.add_stream("aac", rate=AUDIO_RATE)
    samples = int(seconds * AUDIO_RATE)
    t = np.arange(samples, dtype=np.float32) / AUDIO_RATE
    wave = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]  # (1, S) mono
    frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
    frame.sample_rate, frame.pts = AUDIO_RATE, 0
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_truncated(source: str | Path, path: str | Path, keep: float = 0.5) -> Path:
    """Copy the first ``keep`` fraction of ``source``'s bytes to ``path`` (a cut-off download)."""
    data = Path(source).read_bytes()
    path = Path(path)
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_zeroed_media(source: str | Path, path: str | Path) -> Path:
    """Copy an MP4 with its index intact but every byte of media data zeroed (nothing decodes)."""
    data = bytearray(Path(source).read_bytes())
    at = data.find(b"mdat")
    assert at >= 4, "no mdat box"
    size = int.from_bytes(data[at - 4 : at], "big")
    end = len(data) if size == 0 else at - 4 + size
    data[at + 4 : end] = bytes(end - at - 4)
    path = Path(path)
    path.write_bytes(bytes(data))
    return path


def write_text_as_video(path: str | Path) -> Path:
    """Write a plain text file under a video name (e.g. ``notes.mp4``)."""
    path = Path(path)
    path.write_text("this is not a video, just text with a video extension\n" * 20)
    return path
