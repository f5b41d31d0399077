"""Video decoders: the backends (PyAV, torchcodec, decord) behind one interface, with header checks.

Owns opening a file, checking its header (size, duration), rotation, and decoding the frames at
given indices with true timestamps; the registry of backends. Knows nothing about sampling,
resizing or models (:mod:`resadapt.video` drives the backends).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import av
import cv2
import numpy as np

from resadapt.errors import VideoError

try:
    import decord
except ImportError:  # decord ships no wheels for some platforms (e.g. macOS arm64): PyAV serves
    decord = None
try:
    from torchcodec.decoders import VideoDecoder as TorchCodecDecoder
except (ImportError, RuntimeError, OSError):  # not installed, or FFmpeg's shared libraries missing
    TorchCodecDecoder = None

logger = logging.getLogger(__name__)

MAX_DURATION_S = 4 * 3600.0
"""Longest video accepted, in seconds (opening indexes every packet, so hours cost seconds)."""
MAX_SOURCE_PIXELS = 7680 * 4320
"""Largest source frame accepted, in pixels (8K UHD): one RGB frame is then about 100 MB."""
DECODE_GROUP = 4
"""Frames decord decodes per call: bounds the full-resolution frames held at once."""
MAX_SEEK_BACKOFF = 3
"""Earlier keyframes PyAV tries when a seek lands past its target (index and stream disagree)."""
INDEXED_CONTAINERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})
"""Containers (FFmpeg demuxer names) with a per-frame index, where decord 0.6 seeks exactly. On
MPEG-TS and FLV with B-frames and on AVI it returns neighbouring frames (torchcodec fails on them),
so PyAV serves those."""
ERROR_CHARS = 160
"""Longest decoder message quoted in an error sentence."""
_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # decord's "[12:00:00] file.cc:151: "
_DECORD_ERRORS: tuple[type[Exception], ...] = (
    (decord.DECORDError, RuntimeError) if decord is not None else ()
)
_TORCHCODEC_ERRORS = (RuntimeError, ValueError)  # what torchcodec's FFmpeg ops raise


@dataclass(frozen=True)
class StreamInfo:
    """Stream facts a backend reports on opening, before decoding what is sampled."""

    fps: float
    """Average frame rate."""
    total_frames: int
    """Frames in the stream (as the backend indexes them)."""
    duration_s: float
    """Start of the first frame to end of the last, seconds."""
    rotation: int
    """Degrees a player turns the stored frames clockwise (0, 90, 180, 270)."""
    size: tuple[int, int]
    """(height, width) of an upright frame, i.e. after ``rotation``."""


class VideoSource(Protocol):
    """An open video file: stream facts plus decoding of chosen frames by seeking."""

    info: StreamInfo

    def read(self, indices: np.ndarray) -> Iterator[tuple[np.ndarray, float]]:
        """Yield (upright (H, W, 3) uint8 RGB frame, seconds from stream start) per sorted index."""
        ...

    def close(self) -> None: ...


class DecoderError(VideoError):
    """A backend's decoding library failed on a file (the one error that triggers the fallback)."""

    def __init__(self, backend: str, message: str):
        super().__init__(message)
        self.backend = backend


class DecodeTimeout(DecoderError):
    """A backend took longer than DECODE_TIMEOUT_S on one file (it hangs, or the file is huge)."""


# ---------------------------------------------------------------------------------------- helpers
def _quote(error: BaseException) -> str:
    """The useful part of a decoder's message: its last non-empty line, shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = _LOG_PREFIX.sub("", lines[-1]) if lines else type(error).__name__
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def _check_header(path: str, height: int, width: int, duration_s: float | None) -> None:
    """Reject sources too large or too long before anything is decoded."""
    if height * width > MAX_SOURCE_PIXELS:
        raise VideoError(
            f"{path} has {width}x{height} frames; the largest accepted is "
            f"{MAX_SOURCE_PIXELS} pixels per frame (8K UHD)"
        )
    if duration_s is not None and duration_s > MAX_DURATION_S:
        raise VideoError(
            f"{path} is {_hours(duration_s)} long; the longest accepted is {_hours(MAX_DURATION_S)}"
        )


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.1f} s"


def _clockwise(ccw_degrees: float) -> int:
    """FFmpeg's display-matrix angle (counter-clockwise) as a player's clockwise quarter turn."""
    return int(round(-ccw_degrees / 90.0)) % 4 * 90


def _upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a stored (H, W, 3) frame ``rotation`` degrees clockwise (a player's display)."""
    if rotation == 90:
        return cv2.rotate(rgb, cv2.ROTATE_90_CLOCKWISE)
    if rotation == 180:
        return cv2.rotate(rgb, cv2.ROTATE_180)
    if rotation == 270:
        return cv2.rotate(rgb, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return rgb


def _turned(height: int, width: int, rotation: int) -> tuple[int, int]:
    return (width, height) if rotation in (90, 270) else (height, width)


def open_container(path: str) -> av.container.InputContainer:
    try:
        return av.open(path)
    except av.error.FFmpegError as e:
        raise VideoError(
            f"{path} could not be opened as a video: it is not a video file, or it is truncated "
            f"or corrupt ({_quote(e)})"
        ) from e


def video_stream(path: str, container: av.container.InputContainer) -> av.video.VideoStream:
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
        raise VideoError(f"{path} has no video stream (it holds: {kinds})")
    return container.streams.video[0]


def header_duration(container: av.container.InputContainer, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _probe(path: str, backend: str) -> tuple[av.VideoFrame, int]:
    """PyAV reads the header for a backend that seeks by index: the limits hold before it decodes
    anything, and the first frame gives the stored size and rotation (clockwise degrees). Raises
    VideoError for a file no backend can read, DecoderError outside INDEXED_CONTAINERS."""
    container = open_container(path)
    try:
        stream = video_stream(path, container)
        _check_header(path, stream.height, stream.width, header_duration(container, stream))
        first = _first_frame(path, container, stream)
        kind = container.format.name
    except av.error.FFmpegError as e:
        raise VideoError(f"{path} could not be read as a video ({_quote(e)})") from e
    finally:
        container.close()
    if kind not in INDEXED_CONTAINERS:
        raise DecoderError(backend, f"{path} is a {kind} file, where {backend} misplaces frames")
    return first, _clockwise(first.rotation)


def _first_frame(path: str, container: av.container.InputContainer, stream) -> av.VideoFrame:
    """Decode the stream's first frame (its side data carries the display matrix)."""
    try:
        container.seek(0, stream=stream, backward=True)
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as e:
        raise VideoError(f"{path} has no decodable video frames ({_quote(e)})") from e
    raise VideoError(f"{path} has no decodable video frames")


# ---------------------------------------------------------------------------------------- backends
class PyAVSource:
    """PyAV (FFmpeg) backend: indexes packets once, then seeks to the keyframe before each target.

    The frame table (presentation time of every frame, and the keyframes) comes from demuxing the
    packets without decoding them; frame ``i`` is the i-th presentation time. Frames are turned
    upright from the display matrix FFmpeg attaches to each decoded frame.
    """

    name = "pyav"

    def __init__(self, path: str):
        self.path = path
        self._container = open_container(path)
        try:
            self._open()
        except av.error.FFmpegError as e:
            self._container.close()
            raise VideoError(f"{path} could not be read as a video ({_quote(e)})") from e
        except VideoError:
            self._container.close()
            raise

    def _open(self) -> None:
        path, container = self.path, self._container
        stream = self._stream = video_stream(path, container)
        _check_header(path, stream.height, stream.width, header_duration(container, stream))
        stream.thread_type = "AUTO"
        pts, dts, keys, durations = [], [], [], []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the empty packet that flushes the decoder at the end
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None:
                raise VideoError(
                    f"{path} does not time-stamp every frame ({container.format.name} container), "
                    "so frames cannot be found by seeking; re-mux it to MP4 "
                    "(ffmpeg -i IN -c copy OUT.mp4)"
                )
            pts.append(stamp)
            dts.append(packet.dts if packet.dts is not None else stamp)
            keys.append(packet.is_keyframe)
            durations.append(packet.duration or 0)
        if not pts:
            raise VideoError(f"{path} has no decodable video frames (its video stream is empty)")
        order = np.argsort(pts, kind="stable")
        self._pts = np.asarray(pts, np.int64)[order]  # (N,) presentation order
        is_key = np.asarray(keys, bool)[order]
        if not is_key.any():
            is_key[0] = True  # e.g. intra-only streams that flag nothing: start from the top
        self._key_pts = self._pts[is_key]  # (N_key,)
        self._key_seek = np.asarray(dts, np.int64)[order][is_key]  # dts <= pts: never overshoots
        tb = stream.time_base
        last = int(np.asarray(durations, np.int64)[order][-1])
        total = len(self._pts)
        span = float((self._pts[-1] - self._pts[0]) * tb)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else ((total - 1) / span if span > 0 else 0.0)
        if not fps > 0:
            raise VideoError(f"{path} has no usable frame rate")
        duration = span + (float(last * tb) if last > 0 else 1.0 / fps)
        _check_header(path, stream.height, stream.width, duration)
        first = _first_frame(path, container, stream)
        rotation = _clockwise(first.rotation)
        self._decoder: Iterator[av.VideoFrame] | None = None
        self.info = StreamInfo(
            fps=fps,
            total_frames=total,
            duration_s=duration,
            rotation=rotation,
            size=_turned(first.height, first.width, rotation),
        )

    def _seconds(self, pts: int) -> float:
        return float((pts - self._pts[0]) * self._stream.time_base)

    def _seek(self, key: int) -> None:
        self._container.seek(int(self._key_seek[key]), stream=self._stream, backward=True)
        self._decoder = self._container.decode(self._stream)

    def _next_at_or_after(self, target: int) -> av.VideoFrame | None:
        for frame in self._decoder:
            if frame.pts is not None and frame.pts >= target:
                return frame
        return None

    def read(self, indices: np.ndarray) -> Iterator[tuple[np.ndarray, float]]:
        total = self.info.total_frames
        last_pts: int | None = None
        for i in np.asarray(indices, np.int64).tolist():
            target = int(self._pts[i])
            key = max(0, int(np.searchsorted(self._key_pts, target, side="right")) - 1)
            try:
                # Decode on from where we are unless the target lies behind us or past a keyframe.
                stay = last_pts is not None and last_pts < target and self._key_pts[key] <= last_pts
                frame = self._next_at_or_after(target) if stay else None
                for back in range(MAX_SEEK_BACKOFF + 1):
                    if frame is not None:
                        break
                    self._seek(max(0, key - back))
                    frame = self._next_at_or_after(target)
                    if frame is not None and frame.pts > target and key - back > 0:
                        frame = None  # landed past the target: try the keyframe before
                if frame is None:
                    raise VideoError(
                        f"{self.path} is truncated or corrupt: frame {i} of {total} is missing"
                    )
                rgb = frame.to_ndarray(format="rgb24")  # (h, w, 3) stored orientation
            except av.error.FFmpegError as e:
                raise VideoError(
                    f"{self.path} is truncated or corrupt: frame {i} of {total} could not be "
                    f"decoded ({_quote(e)})"
                ) from e
            if frame.pts != target:
                logger.debug("%s: frame %d wanted pts %d, got %d", self.path, i, target, frame.pts)
            last_pts = frame.pts
            yield _upright(rgb, _clockwise(frame.rotation)), self._seconds(frame.pts)

    def close(self) -> None:
        self._container.close()


class _IndexSeekingSource:
    """A backend that seeks by frame index itself (decord, torchcodec), in groups of DECODE_GROUP.

    PyAV reads the header first (:func:`_probe`), so the limits hold before the backend decodes
    anything and the upright size is known; files outside INDEXED_CONTAINERS go on to the next
    backend. Both apply the display matrix themselves. Only the backend's own errors (``errors``)
    become :class:`DecoderError`. Subclasses open the file (:meth:`_open`) and decode one group
    (:meth:`_group`).
    """

    name = ""
    errors: tuple[type[Exception], ...] = ()

    def __init__(self, path: str):
        self.path = path
        first, rotation = _probe(path, self.name)
        try:
            total, fps, end = self._open(path)
        except self.errors as e:
            raise DecoderError(
                self.name,
                f"{path} could not be opened by {self.name}: it may be truncated, corrupt or in a "
                f"codec {self.name} lacks ({_quote(e)})",
            ) from e
        if total == 0 or not fps > 0:
            raise DecoderError(self.name, f"{path} has {total} frames at {fps} fps for {self.name}")
        _check_header(path, first.height, first.width, end)
        self.info = StreamInfo(
            fps=fps,
            total_frames=total,
            duration_s=end,
            rotation=rotation,
            size=_turned(first.height, first.width, rotation),
        )

    def _open(self, path: str) -> tuple[int, float, float]:
        """Open the file; (frames, average fps, seconds from the first frame to the end)."""
        raise NotImplementedError

    def _group(self, group: list[int]) -> tuple[np.ndarray, list[float]]:
        """(g, H, W, 3) upright frames and their seconds from the stream start."""
        raise NotImplementedError

    def read(self, indices: np.ndarray) -> Iterator[tuple[np.ndarray, float]]:
        indices = np.asarray(indices, np.int64)
        for start in range(0, len(indices), DECODE_GROUP):
            group = indices[start : start + DECODE_GROUP].tolist()
            try:
                frames, times = self._group(group)
            except self.errors as e:
                raise DecoderError(
                    self.name,
                    f"{self.path} could not be decoded by {self.name} at frames {group}: it may be "
                    f"truncated or corrupt ({_quote(e)})",
                ) from e
            if frames.shape[1:3] != self.info.size:
                raise DecoderError(
                    self.name,
                    f"{self.name} returned {frames.shape[1]}x{frames.shape[2]} frames for "
                    f"{self.path}, whose upright size is {self.info.size[0]}x{self.info.size[1]}",
                )
            yield from zip(frames, times, strict=True)

    def close(self) -> None:
        self._reader = None  # the library frees its decoder when the reader is collected


class DecordSource(_IndexSeekingSource):
    """decord backend: ``get_batch`` per group."""

    name = "decord"
    errors = _DECORD_ERRORS

    def _open(self, path: str) -> tuple[int, float, float]:
        assert decord is not None, "decord is not installed"
        self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=0)
        total = len(self._reader)
        fps = float(self._reader.get_avg_fps())
        end = float(self._reader.get_frame_timestamp(total - 1)[1]) if total else 0.0
        return total, fps, end

    def _group(self, group: list[int]) -> tuple[np.ndarray, list[float]]:
        batch = self._reader.get_batch(group).asnumpy()  # (g, H, W, 3) upright
        times = self._reader.get_frame_timestamp(group)[:, 0]  # (g,) float32 seconds
        return batch, times.astype(np.float64).tolist()


class TorchCodecSource(_IndexSeekingSource):
    """torchcodec backend: exact seeking from a scan of the packets, ``get_frames_at`` per group."""

    name = "torchcodec"
    errors = _TORCHCODEC_ERRORS

    def _open(self, path: str) -> tuple[int, float, float]:
        assert TorchCodecDecoder is not None, "torchcodec is not installed"
        self._reader = TorchCodecDecoder(
            path, dimension_order="NHWC", seek_mode="exact", num_ffmpeg_threads=0
        )  # 0: FFmpeg picks the thread count, as decord's num_threads=0 and PyAV's AUTO
        meta = self._reader.metadata
        self._start = float(meta.begin_stream_seconds or 0.0)
        end = float(meta.end_stream_seconds or 0.0) - self._start
        return int(meta.num_frames or 0), float(meta.average_fps or 0.0), end

    def _group(self, group: list[int]) -> tuple[np.ndarray, list[float]]:
        batch = self._reader.get_frames_at(group)
        frames = batch.data.numpy()  # (g, H, W, 3) upright
        return frames, (batch.pts_seconds.numpy() - self._start).tolist()


VIDEO_BACKENDS: dict[str, Callable[[str], VideoSource]] = (
    ({"torchcodec": TorchCodecSource} if TorchCodecDecoder is not None else {})
    | ({"decord": DecordSource} if decord is not None else {})
    | {"pyav": PyAVSource}
)
"""Backend name → opener of a :class:`VideoSource`; torchcodec and decord are listed when they
are installed (torchcodec also needs FFmpeg's shared libraries)."""


# ---------------------------------------------------------------------------------------- sampling
