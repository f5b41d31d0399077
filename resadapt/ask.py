"""``python -m resadapt.ask VIDEO QUESTION``: answer one question under a visual-token budget.

Owns argument parsing, logging set-up and the two output formats (a readable table, or exactly
one JSON object with ``--json``). Bad input becomes one ``error: …`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from resadapt.assets import default_allocator, default_backbone, is_random_backbone
from resadapt.errors import ResAdaptError
from resadapt.policies import POLICY_NAMES

logger = logging.getLogger("resadapt.ask")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m resadapt.ask",
        description="Answer a question about a local video file, spending visual tokens where "
        "the policy decides.",
    )
    p.add_argument("video", help="path of a local video file")
    p.add_argument("question", help="the question to answer")
    p.add_argument(
        "--backbone",
        default=None,
        help="tiny-random-qwen2.5-vl, tiny-random-qwen3-vl, a local checkpoint folder or a hub id "
        "(default: the bundled backbone, or $RESADAPT_BACKBONE)",
    )
    p.add_argument("--allocator", default=None, help="allocator folder for --policy learned")
    p.add_argument(
        "--policy",
        choices=POLICY_NAMES,
        default=None,
        help="allocation policy (default: learned when an allocator is available, else content)",
    )
    p.add_argument("--scale", type=float, default=0.5, help="scale of --policy uniform, in (0, 1]")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget", type=float, default=None, help="retention R in (0, 1] of full-res tokens"
    )
    budget.add_argument(
        "--max-visual-tokens", type=int, default=None, help="absolute cap on visual tokens"
    )
    frames = p.add_mutually_exclusive_group()
    frames.add_argument("--frames", type=int, default=None, help="number of frames to sample")
    frames.add_argument("--fps", type=float, default=2.0, help="frames sampled per second")
    p.add_argument("--max-new-tokens", type=int, default=32, help="longest answer, in tokens")
    p.add_argument("--max-pixels", type=int, default=None, help="per-frame pixel cap (base size)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of --policy random")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    return p


def load_pipeline(
    backbone: str | None,
    allocator: str | None,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    max_pixels: int | None = None,
):
    """Load the backbone (and allocator, when there is one) once; log what was loaded."""
    from resadapt.backbone import Backbone
    from resadapt.pipeline import Pipeline
    from resadapt.policies import Learned

    name = backbone or default_backbone()
    bb = Backbone.load(name, dtype=dtype, device=device, max_pixels=max_pixels)
    if is_random_backbone(name):
        logger.warning(
            "backbone %s has random weights: its answers are meaningless (smoke runs only)", name
        )
    path = allocator or default_allocator()
    learned = Learned.load(path, bb.tokenizer, bb.model) if path else None
    return Pipeline(bb, learned)


def format_table(result: dict) -> str:
    """The answer, then one line per chunk and the totals."""
    lines = [f"answer: {result['answer']}", ""]
    lines.append(
        f"{'chunk':>5} {'frames':>12} {'time (s)':>10} {'scale':>6} {'size':>9} {'tokens':>6}"
    )
    times = {}
    for frame in result["frames"]:
        times.setdefault(frame["chunk"], frame["timestamp"])
    for k, c in enumerate(result["chunks"]):
        frames = ",".join(str(i) for i in c["frames"])
        size = f"{c['height']}x{c['width']}"
        lines.append(
            f"{k:>5} {frames:>12} {times[k]:>10.2f} {c['scale']:>6.2f} {size:>9} "
            f"{c['visual_tokens']:>6}"
        )
    t = result["timings"]
    lines += [
        "",
        f"visual tokens {result['visual_tokens']} of {result['vanilla_visual_tokens']} at full "
        f"resolution (retention {result['retention']:.1%}); policy {result['policy']}, "
        f"backbone {result['backbone']}",
        f"time: decode {t['decode_s']:.2f}s, allocate {t['allocate_s']:.3f}s, "
        f"backbone {t['backbone_s']:.2f}s, total {t['total_s']:.2f}s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from resadapt.pipeline import Request

    try:
        allocator = args.allocator or default_allocator()
        request = Request(
            question=args.question,
            policy=args.policy or ("learned" if allocator else "content"),
            scale=args.scale,
            budget=args.budget,
            max_visual_tokens=args.max_visual_tokens,
            num_frames=args.frames,
            fps=args.fps,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
        )
        pipeline = load_pipeline(
            args.backbone,
            allocator,
            dtype=args.dtype,
            device=args.device,
            max_pixels=args.max_pixels,
        )
        result = pipeline.ask(args.video, request).to_json()
    except ResAdaptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
