"""Decode benchmark: our ``load_video`` per backend against qwen-vl-utils' ``fetch_video``.

Usage: ``python -m benchmarks.decode [--frames 32] [--long-minutes 30]``. Writes its own clips into
a temporary directory (a short 720p clip; a long 1080p clip, keyframe every 2 s, made in seconds
by encoding SEGMENT_S once and stream-copying it end to end), then on the same file and frame
count N measures:
  * wall time (median of ``--repeats`` after one warm-up) of ``load_video`` forced to each backend
    (torchcodec, decord, PyAV) and of ``fetch_video({"video": path, "nframes": N, ...})`` with
    FORCE_QWENVL_VIDEO_READER=decord and the same min/max pixels, so all return N frames at the
    same size; each backend's frames are compared with PyAV's (the exact reference);
  * peak resident memory (VmHWM, a fresh subprocess each) on the long clip: our loader per
    backend, ``fetch_video``, and decoding every frame and keeping it (``torchvision.io.
    read_video``'s way), which stops at ``--mem-cap-gib`` and reports the projected total.
If torchvision cannot be imported (a build that does not match torch), a stand-in replaces it whose
``resize`` makes the call torchvision makes for tensors (``interpolate``, bicubic, antialias); the
script says so when that happens.
"""

from __future__ import annotations

import argparse
import enum
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resadapt.decoders import VIDEO_BACKENDS  # noqa: E402
from resadapt.geometry import Geometry  # noqa: E402
from resadapt.video import load_video  # noqa: E402

FACTOR = 28  # Qwen2.5-VL: patch 14 × merge 2 (qwen-vl-utils' default image_patch_size)
MIN_PIXELS = 128 * FACTOR * FACTOR  # qwen-vl-utils VIDEO_MIN_TOKEN_NUM × factor²
MAX_PIXELS = 768 * FACTOR * FACTOR  # qwen-vl-utils VIDEO_MAX_TOKEN_NUM × factor²
GEOMETRY = Geometry(factor=FACTOR, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
FPS = 30
KEYFRAME_S = 2
SHORT_SECONDS = 20
SEGMENT_S = 10
"""Length of the encoded piece the long clip repeats (a multiple of KEYFRAME_S: closed GOPs)."""
MIB = 2**20
BACKENDS = [b for b in ("torchcodec", "decord", "pyav") if b in VIDEO_BACKENDS]


# ------------------------------------------------------------------------------------ clips
def write_clip(path: Path, *, width: int, height: int, seconds: float, moving: bool) -> float:
    """Write an H.264 clip (ultrafast, keyframe every KEYFRAME_S); return seconds it took."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    luma = (60 + 100 * xx / width + 40 * yy / height + rng.integers(0, 12, (height, width))).astype(
        np.uint8
    )  # (H, W) textured gradient
    chroma = np.full((height // 2, width), 128, np.uint8)  # U and V planes, packed as yuv420p rows
    box = height // 5
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(KEYFRAME_S * FPS), "crf": "28"}
        for i in range(int(seconds * FPS)):
            y = np.roll(luma, 3 * i, axis=1) if moving else luma.copy()
            x0 = (4 * i) % (width - box)
            y[height // 3 : height // 3 + box, x0 : x0 + box] = 16 + (i * 7) % 220  # moving box
            frame = av.VideoFrame.from_ndarray(np.concatenate([y, chroma]), format="yuv420p")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return time.perf_counter() - start


def write_long_clip(path: Path, *, width: int, height: int, minutes: float) -> float:
    """Encode SEGMENT_S once, then stream-copy it (pts shifted) to ``minutes``; seconds taken."""
    start = time.perf_counter()
    piece = path.with_suffix(".piece.mp4")
    write_clip(piece, width=width, height=height, seconds=SEGMENT_S, moving=False)
    with av.open(str(piece)) as source, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        packets = [p for p in source.demux(source.streams.video[0]) if p.size]
        tb = source.streams.video[0].time_base
        step = int(round(SEGMENT_S / tb))  # pts units per piece
        for k in range(math.ceil(minutes * 60 / SEGMENT_S)):
            for p in packets:
                copy = av.Packet(bytes(p))
                copy.pts, copy.dts = p.pts + k * step, p.dts + k * step
                copy.duration, copy.time_base = p.duration, tb
                copy.is_keyframe, copy.stream = p.is_keyframe, stream
                out.mux(copy)
    piece.unlink()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------ loaders
def import_fetch_video():
    """qwen-vl-utils' fetch_video on its decord reader; (function, note about torchvision)."""
    os.environ["FORCE_QWENVL_VIDEO_READER"] = "decord"  # read at import by qwen-vl-utils
    note = ""
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError, OSError) as e:
        note = f"torchvision unusable here ({str(e).splitlines()[0]}); resize stand-in used"
        _install_torchvision_stand_in()
    from qwen_vl_utils import fetch_video

    return fetch_video, note


def _install_torchvision_stand_in() -> None:
    """What qwen-vl-utils' decord path needs: transforms.functional.resize, InterpolationMode."""
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    def resize(img, size, interpolation=InterpolationMode.BILINEAR, antialias=True):
        # torchvision's tensor path for bicubic: float, interpolate, round and clamp back to uint8.
        out = torch.nn.functional.interpolate(
            img.float(), size=list(size), mode=interpolation.value, antialias=antialias
        )
        return out.round_().clamp_(0, 255).to(img.dtype) if img.dtype == torch.uint8 else out

    def read_video(*args, **kwargs):
        raise RuntimeError("torchvision.io.read_video is not available in the stand-in")

    tv = types.ModuleType("torchvision")
    tv.__version__ = "0.19.0"
    tv.io = types.ModuleType("torchvision.io")
    tv.io.read_video = read_video
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.InterpolationMode = InterpolationMode
    tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")
    tv.transforms.functional.resize = resize
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.io": tv.io,
            "torchvision.transforms": tv.transforms,
            "torchvision.transforms.functional": tv.transforms.functional,
        }
    )


def run_ours(path: Path, frames: int, backend: str | None = None) -> np.ndarray:
    return load_video(path, geometry=GEOMETRY, num_frames=frames, backend=backend).frames


def run_qwen(fetch_video, path: Path, frames: int) -> np.ndarray:
    ele = {
        "video": str(path),
        "nframes": frames,
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
    }
    video = fetch_video(ele)  # (T, C, H, W) float32
    return video.permute(0, 2, 3, 1).numpy()  # (T, H, W, C)


def run_all_frames(path: Path, cap_bytes: int) -> dict:
    """Decode every frame and keep it as RGB (as torchvision.io.read_video does), up to a cap."""
    import psutil

    process, kept = psutil.Process(), []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total = stream.frames
        for frame in container.decode(stream):
            kept.append(frame.to_ndarray(format="rgb24"))  # (H, W, 3)
            if len(kept) % 16 == 0 and process.memory_info().rss > cap_bytes:
                break
    return {"kept": len(kept), "total": total, "frame_bytes": kept[0].nbytes}


# ------------------------------------------------------------------------------------ measuring
def peak_rss_bytes() -> int:
    """Peak resident set of this process (VmHWM: reset by exec, unlike ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args: argparse.Namespace) -> None:
    """One memory measurement in a fresh process; prints one JSON line."""
    import psutil

    fetch_video = import_fetch_video()[0] if args.child == "qwen" else None
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    result: dict = {}
    if args.child == "qwen":
        run_qwen(fetch_video, args.path, args.frames)
    elif args.child == "all":
        result = run_all_frames(args.path, int(args.mem_cap_gib * 2**30))
    else:  # ours: the default backend order
        run_ours(args.path, args.frames, None if args.child == "ours" else args.child)
    result |= {"peak": peak_rss_bytes(), "before": before, "seconds": time.perf_counter() - start}
    print(json.dumps(result))


def measure_in_child(kind: str, path: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "benchmarks.decode", "--child", kind, "--path", str(path)]
    command += ["--frames", str(args.frames), "--mem-cap-gib", str(args.mem_cap_gib)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: file in page cache, libraries initialised
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32, help="frames sampled per video (N)")
    parser.add_argument("--long-minutes", type=float, default=30.0, help="length of the 1080p clip")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument(
        "--mem-cap-gib", type=float, default=4.0, help="stop the all-frames decode at this RSS"
    )
    parser.add_argument(
        "--child", choices=["ours", *BACKENDS, "qwen", "all"], help=argparse.SUPPRESS
    )
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    fetch_video, note = import_fetch_video()
    with tempfile.TemporaryDirectory(prefix="resadapt-bench-") as tmp:
        short, long = Path(tmp) / "short_720p.mp4", Path(tmp) / "long_1080p.mp4"
        took = write_clip(short, width=1280, height=720, seconds=SHORT_SECONDS, moving=True)
        print(f"generated {short.name}: {SHORT_SECONDS} s 720p@{FPS} in {took:.1f} s")
        took = write_long_clip(long, width=1920, height=1080, minutes=args.long_minutes)
        size_mb = long.stat().st_size / 1e6
        print(f"generated {long.name}: {args.long_minutes:g} min 1080p@{FPS} ({size_mb:.0f} MB)")
        print(
            f"  in {took:.1f} s ({SEGMENT_S} s encoded once, then stream-copied; "
            f"a keyframe every {KEYFRAME_S} s)"
        )
        if note:
            print(f"note: {note}")

        print(f"\nwall time, N = {args.frames} frames, median of {args.repeats} after a warm-up")
        head = f"{'clip':<16}{'loader':<30}{'out (H, W)':<14}{'seconds':>9}{'vs qwen':>9}"
        print(f"{head}{'|x - pyav|':>12}")
        for clip in (short, long):
            reference = load_video(clip, geometry=GEOMETRY, num_frames=args.frames, backend="pyav")
            loaders = {
                "qwen fetch_video (decord)": lambda c=clip: run_qwen(fetch_video, c, args.frames)
            }
            for backend in BACKENDS:
                loaders[f"ours load_video ({backend})"] = lambda c=clip, b=backend: run_ours(
                    c, args.frames, b
                )
            t_qwen = None
            for name, fn in loaders.items():
                frames = fn()
                assert frames.shape == reference.frames.shape, (name, frames.shape)
                diff = np.abs(frames.astype(np.float32) - reference.frames).mean()
                seconds = median_time(fn, args.repeats)
                t_qwen = t_qwen or seconds
                size = f"{frames.shape[1]}x{frames.shape[2]}"
                print(
                    f"{clip.stem:<16}{name:<30}{size:<14}{seconds:>9.3f}{seconds / t_qwen:>9.2f}"
                    f"{diff:>12.2f}"
                )

        print(f"\npeak RSS on {long.name}, N = {args.frames}, fresh process each (VmHWM)")
        print(f"{'loader':<36}{'peak MiB':>10}{'imports MiB':>13}{'vs pyav':>9}")
        kinds = {f"ours load_video ({b})": b for b in BACKENDS}
        kinds |= {"qwen fetch_video (decord)": "qwen", "all frames kept (PyAV decode)": "all"}
        results = {label: measure_in_child(kind, long, args) for label, kind in kinds.items()}
        base = results.get("ours load_video (pyav)", {}).get("peak")
        for label, result in results.items():
            if "error" in result:
                print(f"{label:<36}failed: {result['error']}")
                continue
            peak, before = result["peak"] / MIB, result["before"] / MIB
            ratio = f"{result['peak'] / base:>9.1f}" if base else ""
            print(f"{label:<36}{peak:>10.0f}{before:>13.0f}{ratio}")
        full = results["all frames kept (PyAV decode)"]
        if "kept" in full and full["kept"] < full["total"]:
            projected = (full["before"] + full["total"] * full["frame_bytes"]) / 2**30
            print(
                f"  all frames stopped at the {args.mem_cap_gib:g} GiB cap after {full['kept']} of "
                f"{full['total']} frames; keeping all would need about {projected:.1f} GiB"
            )


if __name__ == "__main__":
    main()
