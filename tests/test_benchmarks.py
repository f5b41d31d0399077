"""The benchmark scripts run as docs/benchmarks.md writes them (``python -m benchmarks.NAME`` from
the repository root), on sizes small enough for CI; their numbers are not checked here."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_allocator_cost_prints_the_ratio():
    done = run("benchmarks.allocator_cost", "--chunks", "2", "--side", "56", "--repeats", "1")
    assert done.returncode == 0, done.stderr
    assert "allocator / prefill time:" in done.stdout


def test_decode_child_measures_memory_in_a_fresh_process(tmp_path):
    from benchmarks.decode import measure_in_child
    from tests import media

    path = media.write_video(tmp_path / "clip.mp4", num_frames=8)
    args = argparse.Namespace(frames=4, mem_cap_gib=1.0)
    result = measure_in_child("ours", path, args)
    assert "error" not in result, result
    assert result["peak"] > 0
