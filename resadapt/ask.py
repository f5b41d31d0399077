"""``python -m resadapt.ask VIDEO QUESTION``: answer one question under a visual-token budget.

``python -m resadapt.ask VIDEO --chat``: a chat, one question per line of standard input.

Owns the command line (the fields of :class:`resadapt.config.Request` and
:class:`resadapt.config.ModelConfig`, plus ``--json``) and the two output formats: a readable
table, or exactly one JSON object with ``--json``. Bad input becomes one ``error: …`` line and
exit code 2.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TextIO

import resadapt.world  # noqa: F401 (an entry point: registers the tiny random backbones)
from resadapt import cli
from resadapt.chat import Chat, ChatConfig, Turn
from resadapt.config import ModelConfig, Request
from resadapt.errors import QuestionError, ResAdaptError, VideoError
from resadapt.pipeline import load_pipeline

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
    def body() -> int | None:
        args = cli.parse(
            argv,
            Request,
            ModelConfig,
            ChatConfig,
            prog="python -m resadapt.ask",
            description="Answer a question about a local video file, spending visual tokens "
            "where the policy decides.",
            exclude=("question",),
            extra=_video_question_and_output,
        )
        cli.setup_logging()
        if args.chat:
            return chat(args, sys.stdin, sys.stdout)
        if args.question is None:
            raise QuestionError("give a question, or --chat to read questions from standard input")
        request = cli.make(Request, args)
        pipeline = load_pipeline(cli.make(ModelConfig, args))
        result = pipeline.ask(args.video, request).to_json()
        print(json.dumps(result) if args.json else format_table(result))

    return cli.run(body)


def chat(args, lines: TextIO, out: TextIO) -> int:
    """``--chat``: one question per line of ``lines`` (a line that is a JSON string is decoded;
    blank lines are skipped), each its own turn about the one decoded video, the earlier turns as
    text (``--history``). Prints each turn as ``--json`` or the table does; a bad question is one
    ``error: …`` line and the chat goes on (exit 2 at the end); a bad video ends it."""
    pipeline = load_pipeline(cli.make(ModelConfig, args))
    session = Chat(pipeline, history=cli.make(ChatConfig, args).history)
    turns: list[Turn] = []
    failed = False
    for line in lines:
        question = chat_line(line)
        if not question.strip():
            continue
        try:
            result = session.turn(args.video, cli.make(Request, args, question=question), turns)
        except VideoError:
            raise
        except ResAdaptError as e:
            sys.stderr.write(f"error: {e}\n")
            failed = True
            continue
        turns.append(Turn(question, result.answer))
        blob = result.to_json()
        out.write((json.dumps(blob) if args.json else format_table(blob) + "\n") + "\n")
        out.flush()
    return 2 if failed else 0


def chat_line(line: str) -> str:
    """A question read from one line: a JSON string is decoded (so it may hold line breaks)."""
    text = line.rstrip("\r\n")
    if text.lstrip().startswith('"'):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(value, str):
            return value
    return text


def _video_question_and_output(parser) -> None:
    """The positional video and question (in that order), ``--json`` and ``--chat``."""
    parser.add_argument("video", help="path of a local video file")
    parser.add_argument("question", nargs="?", help="the question to answer (not with --chat)")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print exactly one JSON object (with --chat: one per turn, one per line)",
    )
    parser.add_argument(
        "--chat",
        action="store_true",
        help="read one question per line from standard input (a line that is a JSON string is "
        "decoded) and answer each as a turn about the one decoded video",
    )


if __name__ == "__main__":
    sys.exit(main())
