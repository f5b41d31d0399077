"""``python -m resadapt.ask VIDEO QUESTION``: answer one question under a visual-token budget.

Owns the command line (the fields of :class:`resadapt.pipeline.Request` and
:class:`resadapt.pipeline.ModelConfig`, plus ``--json``) and the two output formats: a readable
table, or exactly one JSON object with ``--json``. Bad input becomes one ``error: …`` line and
exit code 2.
"""

from __future__ import annotations

import json
import logging
import sys

import resadapt.world  # noqa: F401 (an entry point: registers the tiny random backbones)
from resadapt import cli
from resadapt.pipeline import ModelConfig, Request, load_pipeline

logger = logging.getLogger("resadapt.ask")


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
        size = "dropped" if c.get("dropped") else f"{c['height']}x{c['width']}"
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
        f"time: decode {t['decode_s']:.2f}s, allocate {t['allocate_s']:.3f}s (probe "
        f"{t['probe_s']:.3f}s), backbone {t['backbone_s']:.2f}s, total {t['total_s']:.2f}s",
    ]
    if result["encoded_visual_tokens"] > result["visual_tokens"]:
        lines.append(
            f"the vision tower encoded {result['encoded_visual_tokens']} visual tokens at full "
            f"resolution before pruning ({t['tower_s']:.2f}s of the backbone time)"
        )
    if result["probe_visual_tokens"]:
        lines.insert(-1, f"probe pass: {result['probe_visual_tokens']} visual tokens")
    if result["allocator_warning"]:
        lines.append(f"warning: {result['allocator_warning']}")
    lines += [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def body() -> None:
        args = cli.parse(
            argv,
            Request,
            ModelConfig,
            prog="python -m resadapt.ask",
            description="Answer a question about a local video file, spending visual tokens "
            "where the policy decides.",
            exclude=("question",),
            extra=_video_question_and_output,
        )
        cli.setup_logging()
        request = cli.make(Request, args)
        pipeline = load_pipeline(cli.make(ModelConfig, args))
        result = pipeline.ask(args.video, request).to_json()
        print(json.dumps(result) if args.json else format_table(result))

    return cli.run(body)


def _video_question_and_output(parser) -> None:
    """The positional video and question (in that order) and ``--json``."""
    parser.add_argument("video", help="path of a local video file")
    parser.add_argument("question", help="the question to answer")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")


if __name__ == "__main__":
    sys.exit(main())
