"""Graders: a backbone response and a gold answer → accuracy in [0, 1].

Owns answer parsing for the four problem types (multiple-choice letter, exact match, numeric
tolerance, temporal IoU). Knows nothing about models, videos or training.
"""

from __future__ import annotations

import re
import string

LETTERS = "ABCDEFGHIJ"
"""Option letters; at most this many options per question."""
NUMERIC_RTOL = 0.01
"""Relative tolerance of numeric answers (at least 0.01 absolute near zero)."""

_NUMBER = re.compile(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?")


def parse_letter(response: str, num_options: int) -> str | None:
    """The option letter a response chose: a leading letter, or the first standalone one."""
    allowed = LETTERS[:num_options]
    text = response.strip()
    m = re.match(rf"^\(?([{allowed}])\b", text)
    if m is None:
        m = re.search(rf"\b([{allowed}])\b", text)
    return m.group(1) if m else None


def normalise(text: str) -> str:
    """Lower case, no punctuation, single spaces."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def parse_numbers(text: str) -> list[float]:
    return [float(x) for x in _NUMBER.findall(text)]


def temporal_iou(pred: tuple[float, float], gold: tuple[float, float]) -> float:
    """IoU of two [start, end] intervals (a reversed interval is swapped)."""
    (a0, a1), (b0, b1) = sorted(pred), sorted(gold)
    inter = max(0.0, min(a1, b1) - max(a0, b0))
    union = max(a1, b1) - min(a0, b0)
    return inter / union if union > 0 else float(a0 == b0)


def grade(problem_type: str, response: str, gold: str, num_options: int = 0) -> float:
    """Accuracy of ``response`` against ``gold`` (the letter for multiple choice)."""
    if problem_type == "multiple_choice":
        return float(parse_letter(response, num_options or len(LETTERS)) == gold.strip().upper())
    if problem_type == "exact":
        return float(normalise(response) == normalise(gold))
    if problem_type == "numeric":
        pred, ref = parse_numbers(response), parse_numbers(gold)
        if not pred or not ref:
            return 0.0
        return float(abs(pred[0] - ref[0]) <= max(0.01, NUMERIC_RTOL * abs(ref[0])))
    if problem_type == "temporal_iou":
        pred, ref = parse_numbers(response), parse_numbers(gold)
        if len(pred) < 2 or len(ref) < 2:
            return 0.0
        return temporal_iou((pred[0], pred[1]), (ref[0], ref[1]))
    raise ValueError(f"unknown problem type {problem_type!r}")
