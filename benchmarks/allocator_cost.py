"""What the allocator costs next to the backbone it saves tokens for, measured side by side.

``python -m benchmarks.allocator_cost [--chunks 32] [--backbone tiny|qwen2.5-vl-3b] [--side 224]``

Times, in one run on the same frames: the allocator's forward on K chunks (thumbnails + question),
and the backbone's prefill (vision tower + language model over the prompt) on the same 2K frames at
full size. ``qwen2.5-vl-3b`` builds a model with the published Qwen2.5-VL-3B architecture and random
weights (no download; the cost of a forward does not depend on the weights' values) in bfloat16.
Prints parameter counts, median seconds and the ratio allocator / prefill.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from allocator import Allocator, AllocatorConfig
from resadapt import cli
from resadapt.backbone import Backbone, ChunkedVideo
from resadapt.policies import AllocationContext, allocator_inputs
from resadapt.video import thumbnails
from resadapt.world.tiny import build_tiny_qwen2_5_vl

QUESTION = "Which way do the stripes on the green card run?"


def qwen25_vl_3b(tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    """The Qwen2.5-VL-3B architecture (hidden 2048, 36 layers; 32-block 1280-wide tower)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>")}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24]},
        },
        vision_config={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 2048,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "window_size": 112,
            "tokens_per_second": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
    )
    return Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16).eval()


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class CostConfig:
    """What the benchmark measures."""

    chunks: int = cli.option("temporal chunks (2 frames each)", 32)
    backbone: str = cli.option(
        "backbone: the tiny random one, or the Qwen2.5-VL-3B architecture with random weights",
        "tiny",
        choices=("tiny", "qwen2.5-vl-3b"),
    )
    side: int = cli.option("frame side at full size, pixels", 168)
    repeats: int = cli.option("timed runs per measurement (the median is printed)", 3)


def main(argv: list[str] | None = None) -> int:
    def body() -> None:
        args = cli.parse(
            argv,
            CostConfig,
            prog="python -m benchmarks.allocator_cost",
            description=__doc__.splitlines()[0],
        )
        measure(cli.make(CostConfig, args))

    return cli.run(body)


def measure(args: CostConfig) -> None:
    """Build the models, time both forwards and print the table."""
    torch.manual_seed(0)

    model, processor = build_tiny_qwen2_5_vl(max_pixels=args.side * args.side)
    if args.backbone == "qwen2.5-vl-3b":
        model = qwen25_vl_3b(processor.tokenizer)
    backbone = Backbone(args.backbone, model, processor)
    frames = np.random.default_rng(0).integers(
        0, 255, (2 * args.chunks, args.side, args.side, 3), dtype=np.uint8
    )  # (T, H, W, 3)
    times = np.arange(2 * args.chunks) / 2.0

    alloc = Allocator(AllocatorConfig(vocab_size=len(processor.tokenizer))).eval()
    ctx = AllocationContext(thumbnails(frames, alloc.config.thumb_side), times, QUESTION)

    @torch.no_grad()
    def allocate():
        batch = allocator_inputs([ctx], processor.tokenizer, alloc.config.max_query_tokens)
        alloc(**batch)

    video = ChunkedVideo(
        chunks=[frames[k : k + 2] for k in range(0, len(frames), 2)],
        timestamps=times.reshape(-1, 2),
        sample_fps=2.0,
    )
    inputs = backbone.prepare([video], [QUESTION])
    visual = int((inputs["input_ids"] == processor.video_token_id).sum())

    @torch.no_grad()
    def prefill():
        backbone.model(**inputs, logits_to_keep=1)

    t_alloc = median_seconds(allocate, args.repeats)
    t_prefill = median_seconds(prefill, args.repeats)
    n_alloc = sum(p.numel() for p in alloc.parameters())
    n_bb = sum(p.numel() for p in backbone.model.parameters())
    print(f"chunks {args.chunks} ({2 * args.chunks} frames at {args.side}x{args.side}), "
          f"{visual} visual tokens, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'part':<28} {'params':>12} {'median s':>10}")
    print(f"{'allocator (float32)':<28} {n_alloc:>12,} {t_alloc:>10.4f}")
    print(f"{'backbone prefill (' + args.backbone + ')':<28} {n_bb:>12,} {t_prefill:>10.4f}")
    print(f"allocator / prefill time: {t_alloc / t_prefill:.4f}")


if __name__ == "__main__":
    sys.exit(main())
