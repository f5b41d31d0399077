"""The offline world's pixels: the drifting clutter, a card's evidence pattern, and H.264 files.

Owns how a sample looks and how it is written (resadapt.world.synth composes scenes and questions
from these). Knows nothing about tasks, questions or datasets.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

GRATING_PERIOD_PX = 3.5
"""Grating period along each image axis, in pixels: read by 14-px patches at full size, removed
by an antialiased resize to 1/3 (cut-off period 6 px)."""
EVIDENCE_CONTRAST = 45.0
"""Amplitude of the grating around the card colour, in 8-bit grey levels."""
GRATING_TAPER_PX = 12
"""Width of the raised-cosine ramp (at most card_px / 4) that fades the grating in from the card's
edges. A grating cut off by a hard edge leaves orientation-dependent bands after downscaling
(horizontal stripes brighten the top and bottom edges); the ramp keeps that residue near one grey
level at 1/3."""
DIGIT_CONTRAST = 110.0
"""Darkening of digit strokes below the card colour, in 8-bit grey levels."""
BACKGROUND_BLOBS = 12
"""Drifting Gaussian blobs that make up the clutter."""
BACKGROUND_CONTRAST = 25.0
"""Largest blob amplitude, in grey levels (the card grating is 45)."""
DEFAULT_CRF = 12
"""x264 constant rate factor of written videos: near-lossless, so the grating survives coding."""
KEYFRAME_INTERVAL = 16
"""Frames between H.264 keyframes, so that seeking decoders stay cheap on long videos."""
WAVE_VECTORS = ((0, 1), (1, 0), (1, 1), (1, -1))
"""(x, y) wave vector of each orientation, in units of 1 / GRATING_PERIOD_PX."""
DIGITS = tuple(str(d) for d in range(10))


def write_video(path: str | Path, frames: np.ndarray, fps: float, crf: int = DEFAULT_CRF) -> None:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB as H.264 yuv420p in an .mp4; frame t at t/fps s."""
    import av  # imported here so that in-memory generation does not need PyAV

    num_frames, height, width, _ = frames.shape
    assert frames.dtype == np.uint8 and height % 2 == 0 and width % 2 == 0, frames.shape
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # x264's macroblock-tree rate control made identical inputs encode differently from run to
        # run (measured with PyAV 18); without it, and on one thread, the bytes are reproducible.
        stream.options = {
            "crf": str(crf),
            "g": str(KEYFRAME_INTERVAL),
            "threads": "1",
            "x264-params": "mbtree=0",
        }
        for t in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frames[t], format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def background(rng: np.random.Generator, num_frames: int, size: int) -> np.ndarray:
    """Near-grey clutter of drifting Gaussian blobs on a torus: (T, H, W, 3) float32."""
    grey = rng.uniform(95.0, 150.0)
    centres = rng.uniform(0.0, size, (BACKGROUND_BLOBS, 2))  # (B, 2) y, x
    velocities = rng.uniform(-2.5, 2.5, (BACKGROUND_BLOBS, 2))  # pixels per frame
    sigmas = rng.uniform(8.0, 24.0, BACKGROUND_BLOBS)
    amplitudes = rng.uniform(-BACKGROUND_CONTRAST, BACKGROUND_CONTRAST, BACKGROUND_BLOBS)
    tints = 1.0 + rng.uniform(-0.12, 0.12, (BACKGROUND_BLOBS, 3))  # (B, 3) near-grey
    times = np.arange(num_frames, dtype=np.float32)
    pixels = np.arange(size, dtype=np.float32)
    centre_t = centres[:, None, :] + velocities[:, None, :] * times[None, :, None]  # (B, T, 2)
    offset = pixels[None, None, None, :] - centre_t[..., None]  # (B, T, 2, H)
    offset = (offset + size / 2) % size - size / 2  # wrap around the frame
    profile = np.exp(-0.5 * (offset / sigmas[:, None, None, None]) ** 2)  # (B, T, 2, H)
    profile = profile.astype(np.float32)
    weights = (amplitudes[:, None] * tints).astype(np.float32)  # (B, 3)
    rows = profile[:, :, 0].transpose(1, 2, 0)  # (T, H, B)
    cols = profile[:, :, 1].transpose(1, 0, 2)  # (T, B, W)
    video = np.stack([(rows * weights[:, c]) @ cols for c in range(3)], axis=-1)  # (T, H, W, 3)
    return video + np.float32(grey)


def card_pattern(evidence: str, label_index: int, card_px: int, phase: float) -> np.ndarray:
    """Luminance offsets of a card around its colour: (card_px, card_px) float32."""
    if evidence == "grating":
        y, x = np.mgrid[0:card_px, 0:card_px].astype(np.float32)
        kx, ky = WAVE_VECTORS[label_index]
        wave = np.cos(2 * np.pi * (kx * x + ky * y) / GRATING_PERIOD_PX + phase)
        inset = np.arange(card_px) + 0.5
        taper_px = min(GRATING_TAPER_PX, card_px / 4)  # small cards keep a flat centre
        ramp = np.clip(np.minimum(inset, card_px - inset) / taper_px, 0.0, 1.0)
        ramp = 0.5 - 0.5 * np.cos(np.pi * ramp)  # (c,) 0 at the edge, 1 inside
        return (EVIDENCE_CONTRAST * wave * np.outer(ramp, ramp)).astype(np.float32)
    import cv2  # only the digit task draws text

    text = DIGITS[label_index]
    font = cv2.FONT_HERSHEY_SIMPLEX
    (_, text_h), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = card_px / 3 / text_h
    thickness = max(1, round(card_px / 32))
    (text_w, text_h), _ = cv2.getTextSize(text, font, scale, thickness)
    strokes = np.zeros((card_px, card_px), np.uint8)
    origin = ((card_px - text_w) // 2, (card_px + text_h) // 2)
    cv2.putText(strokes, text, origin, font, scale, 255, thickness, cv2.LINE_AA)
    return (-DIGIT_CONTRAST / 255.0 * strokes).astype(np.float32)
