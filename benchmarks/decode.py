"""Decode benchmark: our ``load_video`` against qwen-vl-utils' ``fetch_video``, time and memory.

Usage: ``python -m benchmarks.decode [--frames 32] [--long-minutes 3]``. Writes its own clips into a
temporary directory (a short 720p clip; a long, static-ish 1080p clip, keyframe every 2 s), then on
the same file and frame count N measures:
  * wall time (median of ``--repeats`` after one warm-up) of ``load_video`` (decord; forced PyAV)
    and of ``fetch_video({"video": path, "nframes": N, ...})`` with FORCE_QWENVL_VIDEO_READER=decord
    and the same min/max pixels, so both return N frames at the same size;
  * peak resident memory (VmHWM, a fresh subprocess each) on the long clip: our loader,
    ``fetch_video``, and decoding every frame and keeping it (``torchvision.io.read_video``'s way),
    which stops at ``--mem-cap-gib`` and reports how far it got and the projected total.
If torchvision cannot be imported (a build that does not match torch), a stand-in replaces it whose
``resize`` makes the call torchvision makes for tensors (``interpolate``, bicubic, antialias); the
script says so when that happens.
"""

from __future__ import annotations

import argparse
import enum
import json
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

from resadapt.geometry import Geometry  # noqa: E402
from resadapt.video import load_video  # noqa: E402

FACTOR = 28  # Qwen2.5-VL: patch 14 × merge 2 (qwen-vl-utils' default image_patch_size)
MIN_PIXELS = 128 * FACTOR * FACTOR  # qwen-vl-utils VIDEO_MIN_TOKEN_NUM × factor²
MAX_PIXELS = 768 * FACTOR * FACTOR  # qwen-vl-utils VIDEO_MAX_TOKEN_NUM × factor²
GEOMETRY = Geometry(factor=FACTOR, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
FPS = 30
KEYFRAME_S = 2
SHORT_SECONDS = 20
MIB = 2**20


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
    if args.child == "ours":
        run_ours(args.path, args.frames)
    elif args.child == "qwen":
        run_qwen(fetch_video, args.path, args.frames)
    else:
        result = run_all_frames(args.path, int(args.mem_cap_gib * 2**30))
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
    parser.add_argument("--long-minutes", type=float, default=3.0, help="length of the 1080p clip")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument(
        "--mem-cap-gib", type=float, default=4.0, help="stop the all-frames decode at this RSS"
    )
    parser.add_argument("--child", choices=["ours", "qwen", "all"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    fetch_video, note = import_fetch_video()
    with tempfile.TemporaryDirectory(prefix="resadapt-bench-") as tmp:
        short, long = Path(tmp) / "short_720p.mp4", Path(tmp) / "long_1080p.mp4"
        took = write_clip(short, width=1280, height=720, seconds=SHORT_SECONDS, moving=True)
        print(f"generated {short.name}: {SHORT_SECONDS} s 720p@{FPS} in {took:.1f} s")
        took = write_clip(
            long, width=1920, height=1080, seconds=args.long_minutes * 60, moving=False
        )
        size_mb = long.stat().st_size / 1e6
        print(f"generated {long.name}: {args.long_minutes:g} min 1080p@{FPS} ({size_mb:.0f} MB) ")
        print(f"  in {took:.1f} s (ultrafast, keyframe every {KEYFRAME_S} s)")
        if note:
            print(f"note: {note}")

        print(f"\nwall time, N = {args.frames} frames, median of {args.repeats} after a warm-up")
        print(f"{'clip':<16}{'loader':<30}{'out (H, W)':<14}{'seconds':>9}{'vs qwen':>9}")
        for clip in (short, long):
            ours = run_ours(clip, args.frames)
            theirs = run_qwen(fetch_video, clip, args.frames)
            assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
            diff = np.abs(ours.astype(np.float32) - theirs).mean()
            loaders = {
                "qwen fetch_video (decord)": lambda c=clip: run_qwen(fetch_video, c, args.frames),
                "ours load_video (decord)": lambda c=clip: run_ours(c, args.frames),
                "ours load_video (pyav)": lambda c=clip: run_ours(c, args.frames, "pyav"),
            }
            rows = [(name, median_time(fn, args.repeats)) for name, fn in loaders.items()]
            t_qwen = rows[0][1]
            for name, seconds in rows:
                size = f"{ours.shape[1]}x{ours.shape[2]}"
                print(f"{clip.stem:<16}{name:<30}{size:<14}{seconds:>9.3f}{seconds / t_qwen:>9.2f}")
            print(f"{'':<16}same frames? mean |ours - qwen| = {diff:.2f} grey levels")

        print(f"\npeak RSS on {long.name}, N = {args.frames}, fresh process each (VmHWM)")
        print(f"{'loader':<36}{'peak MiB':>10}{'imports MiB':>13}{'vs ours':>9}")
        results = {kind: measure_in_child(kind, long, args) for kind in ("ours", "qwen", "all")}
        base = results["ours"].get("peak")
        labels = {
            "ours": "ours load_video (decord)",
            "qwen": "qwen fetch_video (decord)",
            "all": "all frames kept (PyAV decode)",
        }
        for kind, result in results.items():
            if "error" in result:
                print(f"{labels[kind]:<36}failed: {result['error']}")
                continue
            peak, before = result["peak"] / MIB, result["before"] / MIB
            ratio = f"{result['peak'] / base:>9.1f}" if base else ""
            print(f"{labels[kind]:<36}{peak:>10.0f}{before:>13.0f}{ratio}")
        full = results["all"]
        if "kept" in full and full["kept"] < full["total"]:
            projected = (full["before"] + full["total"] * full["frame_bytes"]) / 2**30
            print(
                f"  all frames stopped at the {args.mem_cap_gib:g} GiB cap after {full['kept']} of "
                f"{full['total']} frames; keeping all would need about {projected:.1f} GiB"
            )


if __name__ == "__main__":
    main()
