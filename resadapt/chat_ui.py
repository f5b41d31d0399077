"""What the app's chat shows: the turns as chat messages, a budget strip per turn, and how the
budget moved from turn to turn.

Owns the chat's message dicts (gradio 6 Chatbot's ``{"role", "content", "metadata"}``), reading the
earlier turns back from them, the per-turn strip and the chart rows across turns, and the run of
one chat turn as views. Knows nothing about gradio (``app.py`` wires these functions to widgets)
nor about how a turn is answered (resadapt.chat).

Letters: K chunks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pandas as pd

from resadapt import ui
from resadapt.chat import Chat, HistoryError, Turn
from resadapt.pipeline import Pipeline

STRIP_LEVELS = "▁▂▃▄▅▆▇█"
"""Bar heights of the budget strip, lowest first: a chunk's tokens against its full resolution."""
DROPPED_MARK = "·"
"""A chunk the policy dropped (never encoded), in the strip."""
EMPTY_ANSWER = "(the backbone returned an empty answer)"
"""What an empty generation shows as (read back as an empty answer)."""
PENDING_ANSWER = "…"
"""What the answer shows while nothing has been generated yet."""
MOVED_COLUMNS = ("time_s", "tokens", "scale", "chunk", "turn")
"""Columns of :func:`moved_rows`."""


def make_chat(pipeline: Pipeline, history: str = "text") -> Chat:
    """A chat over ``pipeline`` that decodes with the app's limits (:func:`resadapt.ui.decode`)."""
    return Chat(pipeline, history=history, decode=functools.partial(ui.decode, pipeline))


# ---------------------------------------------------------------------------------------- messages
def message_text(message: dict) -> str:
    """The text of a message whose content is a string or a list of ``{"type": "text"}`` parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    parts = [p.get("text", "") for p in content or [] if isinstance(p, dict)]
    return "\n".join(p for p in parts if p)


def is_budget_note(message: dict) -> bool:
    """Whether a message is a turn's budget note (titled metadata), not an answer."""
    return bool((message.get("metadata") or {}).get("title"))


def turns_from_messages(messages: Sequence[dict]) -> list[Turn]:
    """The (question, answer) turns of a chat's messages, in order; budget notes are skipped and a
    question with no answer yet is left out. Raises HistoryError for a message that is no dict."""
    turns, question = [], None
    for message in messages:
        if not isinstance(message, dict):
            raise HistoryError(
                f"a chat message is a dict with a role and a content, got {message!r:.80}"
            )
        if is_budget_note(message):
            continue
        text = message_text(message)
        if message.get("role") == "user":
            question = text
        elif message.get("role") == "assistant" and question is not None:
            answer = "" if text in (EMPTY_ANSWER, PENDING_ANSWER) else text
            turns.append(Turn(question, answer))
            question = None
    return turns


def turn_messages(question: str, result: dict, number: int, done: bool = True) -> list[dict]:
    """One turn as messages: the question, the answer, and a budget note (titled with the visual
    tokens against full resolution; its body is :func:`budget_strip`)."""
    answer = result["answer"] or (EMPTY_ANSWER if done else PENDING_ANSWER)
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
        {
            "role": "assistant",
            "content": budget_strip(result),
            "metadata": {"title": budget_title(result, number)},
        },
    ]


def budget_title(result: dict, number: int) -> str:
    """``turn N: S of V visual tokens (R %) · policy P``."""
    return (
        f"turn {number}: {result['visual_tokens']} of {result['vanilla_visual_tokens']} visual "
        f"tokens ({result['retention']:.1%}) · policy {result['policy']}"
    )


def budget_strip(result: dict) -> str:
    """Markdown: one bar per chunk (its tokens against the chunk at full resolution), the largest
    chunk with its frames, and the tokens per chunk."""
    chunks = result["chunks"]  # (K,)
    full = result["vanilla_visual_tokens"] / len(chunks)
    bars = []
    for c in chunks:
        if c.get("dropped"):
            bars.append(DROPPED_MARK)
            continue
        level = round(c["visual_tokens"] / full * (len(STRIP_LEVELS) - 1))
        bars.append(STRIP_LEVELS[min(max(level, 0), len(STRIP_LEVELS) - 1)])
    tokens = [c["visual_tokens"] for c in chunks]
    k = max(range(len(chunks)), key=tokens.__getitem__)
    frames = ", ".join(str(i) for i in chunks[k]["frames"])
    per_chunk = " · ".join(str(t) for t in tokens)
    return (
        f"`{''.join(bars)}` largest: chunk {k} (frames {frames}), {tokens[k]} tokens  \n"
        f"tokens per chunk: {per_chunk}"
    )


def moved_rows(results: Sequence[dict]) -> pd.DataFrame:
    """Long-format rows of every turn's allocation (per sampled frame, as
    :func:`resadapt.ui.budget_rows`) labelled ``turn N``: one chart line per turn."""
    frames = [ui.budget_rows(r).assign(turn=f"turn {i + 1}") for i, r in enumerate(results)]
    if not frames:  # typed like a full one: a chart's axes keep their kinds when it fills
        kinds = ("float64", "int64", "float64", "int64", "str")
        return pd.DataFrame(
            {c: pd.Series(dtype=k) for c, k in zip(MOVED_COLUMNS, kinds, strict=True)}
        )
    return pd.concat(frames, ignore_index=True)[list(MOVED_COLUMNS)]


# ---------------------------------------------------------------------------------------- running
@dataclass
class ChatView:
    """What the chat shows at one moment of a turn; None means "unchanged"."""

    messages: list[dict]
    moved: pd.DataFrame | None = None
    """Every turn's allocation, for the "how the budget moved" chart (once the turn is done)."""
    results: list[dict] | None = None
    """Every turn's ``ask --json`` object so far (once the turn is done)."""

    def outputs(self) -> tuple:
        """In the app's order: messages, the chart rows, the turns' results."""
        return (self.messages, self.moved, self.results)


def chat_views(
    chat: Chat,
    path: str | None,
    form: ui.Form,
    messages: Sequence[dict] | None,
    results: Sequence[dict] | None = None,
) -> Iterator[ChatView]:
    """Answer ``form.question`` as the next turn after ``messages``: yield the messages as the
    answer grows, then the final messages with every turn's chart rows and results.

    ``results`` are the earlier turns' ``ask --json`` objects (the chart's); the earlier turns the
    backbone reads are taken from ``messages`` (:func:`turns_from_messages`).
    """
    request = form.request()
    before = list(messages or [])
    turns = turns_from_messages(before)
    number = len(turns) + 1
    result = None
    for result in chat.turn_stream(path, request, turns):
        yield ChatView(before + turn_messages(request.question, result.to_json(), number, False))
    assert result is not None
    final = result.to_json()
    earlier = list(results or [])
    if len(earlier) != len(turns):  # e.g. an API client's history: chart this turn alone
        earlier = []
    done = [*earlier, final]
    yield ChatView(before + turn_messages(request.question, final, number), moved_rows(done), done)


def chat_json(
    chat: Chat, path: str | None, form: ui.Form, messages: Sequence[dict] | None
) -> tuple[list[dict], dict]:
    """What ``/chat`` returns: the messages after this turn, and its ``ask --json`` object."""
    *_, last = chat_views(chat, path, form, messages)
    assert last.results is not None
    return last.messages, last.results[-1]
