"""Boundary errors and the named limits they enforce.

Owns the exception types that user-facing entry points turn into one sentence (CLI: ``error: …``,
exit 2; app: ``gr.Error``). Knows nothing about models, videos or UIs.
"""

from __future__ import annotations

MAX_QUESTION_CHARS = 2000
"""Longest question accepted, in characters (a video question, not a document)."""


class ResAdaptError(ValueError):
    """A problem with user input: one sentence that names the bad value and the fix."""

    reason = "rejected"
    """How the evaluator counts an example refused with this error (a status of its records)."""


class VideoError(ResAdaptError):
    """The video cannot be used (missing, not a video, corrupt, no decodable frames)."""

    reason = "unreadable"


class QuestionError(ResAdaptError):
    """The question is empty or too long."""


class BudgetError(ResAdaptError):
    """A budget, scale or frame count is outside its allowed range."""

    reason = "over_budget"


class PolicyError(ResAdaptError):
    """A policy name or allocator checkpoint cannot be used."""


class ChunkLimitError(PolicyError):
    """A video has more chunks than a policy (the allocator's ``max_chunks``) accepts."""

    reason = "too_many_chunks"


class BackboneError(ResAdaptError):
    """A backbone name or checkpoint cannot be loaded."""


class DataError(ResAdaptError):
    """A data file cannot be read at all (missing, wrong format, no valid rows)."""


def validate_question(question: str) -> str:
    """Return the stripped question, or raise QuestionError naming the problem."""
    if not isinstance(question, str) or not question.strip():
        raise QuestionError("the question is empty; ask something about the video")
    question = question.strip()
    if len(question) > MAX_QUESTION_CHARS:
        raise QuestionError(
            f"the question is {len(question)} characters long; the limit is {MAX_QUESTION_CHARS}"
        )
    return question
