"""Video-QA datasets: JSONL or Parquet rows → validated examples, with counted skips.

Owns the row schema shared by the trainer and the evaluator, the prompt text of each problem type
and the data flags both share (:class:`DataConfig`). Knows nothing about decoding, models or
grading (the option letters are :mod:`resadapt.grading`'s; published benchmark files are read by
:mod:`resadapt.benchmark_readers`).

Row schema: ``{"video": path, "question": str, "answer": str, "options": [str]?,
"problem_type": "multiple_choice" | "exact" | "numeric" | "temporal_iou"}``; a relative ``video``
path is relative to the data file's folder; unknown keys are kept in ``Example.extra``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from resadapt.benchmark_readers import BENCHMARK_NAMES, read_benchmark
from resadapt.cli import option
from resadapt.errors import DataError, QuestionError, validate_question
from resadapt.grading import LETTERS

logger = logging.getLogger(__name__)

PROBLEM_TYPES = ("multiple_choice", "exact", "numeric", "temporal_iou")
QUESTION_REJECTED = "question rejected"
"""Skip reason of a valid row whose prompt the pipeline would refuse (e.g. too long)."""


@dataclass
class DataConfig:
    """Which rows a run reads: ``--data``, read natively as a ``--benchmark``'s published file with
    its videos under ``--video-root``; training and evaluation share these fields."""

    data: str = option(
        "dataset: .jsonl or .parquet rows (see resadapt.data), or the --benchmark's own file "
        "(MVBench: its json folder); required",
        "",
    )
    benchmark: str | None = option(
        "read --data (and train's --val-data) as this benchmark's published file; eval reports "
        "its categories (see resadapt.benchmark_readers)",
        default=None,
        choices=BENCHMARK_NAMES,
    )
    video_root: str | None = option(
        "folder of the --benchmark's videos (default: the folder of --data)", None
    )

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:  # the other config a subclass also inherits (e.g. the devices)
            parent()
        if not self.data:
            raise DataError(
                "--data is required: a .jsonl or .parquet file of rows, or the --benchmark's own "
                "file"
            )


@dataclass
class Example:
    """One validated (video, question, answer) row."""

    video: str
    question: str
    answer: str
    problem_type: str
    options: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def prompt(self) -> str:
        """The question as the backbone sees it (options listed for multiple choice)."""
        if self.problem_type != "multiple_choice":
            return self.question
        listed = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(self.options or []))
        return f"{self.question}\n{listed}\nAnswer with the option's letter."

    def gold(self) -> str:
        """The answer string a correct response contains (the letter for multiple choice)."""
        if self.problem_type == "multiple_choice" and self.options and self.answer in self.options:
            return LETTERS[self.options.index(self.answer)]
        return self.answer


def _validate(row: object, root: Path) -> tuple[Example | None, str]:
    """An Example, or None and the reason the row is skipped."""
    if not isinstance(row, dict):
        return None, "row is not an object"
    for key in ("video", "question", "answer", "problem_type"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            return None, f"missing or empty {key!r}"
    if row["problem_type"] not in PROBLEM_TYPES:
        return None, "unknown problem_type"
    options = row.get("options")
    if row["problem_type"] == "multiple_choice":
        if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS):
            return None, "multiple_choice needs 2-10 options"
        options = [str(o) for o in options]
        if row["answer"] not in options and row["answer"] not in LETTERS[: len(options)]:
            return None, "answer is neither an option nor its letter"
    else:
        options = None
    video = Path(row["video"])
    if not video.is_absolute():
        video = root / video
    known = {"video", "question", "answer", "problem_type", "options"}
    return (
        Example(
            video=str(video),
            question=row["question"].strip(),
            answer=row["answer"].strip(),
            problem_type=row["problem_type"],
            options=options,
            extra={k: v for k, v in row.items() if k not in known},
        ),
        "",
    )


def read_examples(
    path: str | Path, benchmark: str | None = None, video_root: str | Path | None = None
) -> tuple[list[Example], Counter]:
    """Read a .jsonl or .parquet file; returns the valid examples and skip reasons with counts.

    With ``benchmark`` the file (or folder) is that benchmark's own
    (:mod:`resadapt.benchmark_readers`), its videos under ``video_root`` (default: the data's
    folder).
    """
    path = Path(path)
    if benchmark is not None:
        root = Path(video_root) if video_root is not None else path.parent
        rows, skipped = read_benchmark(benchmark, path, root)
        return _examples(rows, root, skipped, path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    skipped: Counter = Counter()
    rows: list[object] = []
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {path} as Parquet: {e}") from e
        rows = [
            {k: (list(v) if hasattr(v, "tolist") else v) for k, v in r.items() if v is not None}
            for r in frame.to_dict(orient="records")
        ]
    elif path.suffix in (".jsonl", ".json"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                skipped["invalid JSON"] += 1
                logger.warning("%s:%d: invalid JSON, skipped", path, n)
    else:
        raise DataError(f"{path} is neither .jsonl nor .parquet")
    return _examples(rows, path.parent, skipped, path)


def _examples(
    rows: list[object], root: Path, skipped: Counter, path: Path
) -> tuple[list[Example], Counter]:
    """The valid examples of ``rows`` (relative videos under ``root``); skips counted."""
    examples = []
    for row in rows:
        example, reason = _validate(row, root)
        if example is None:
            skipped[reason] += 1
        else:
            examples.append(example)
    if skipped:
        logger.warning("%s: skipped %d rows: %s", path, sum(skipped.values()), dict(skipped))
    if not examples:
        raise DataError(f"{path} has no valid rows")
    return examples, skipped


def load_examples(
    path: str | Path,
    limit: int | None = None,
    benchmark: str | None = None,
    video_root: str | Path | None = None,
) -> tuple[list[Example], Counter]:
    """The usable rows of a data file (the first ``limit``), with skipped rows counted by reason.

    A row is usable when it is valid (:func:`read_examples`) and the pipeline accepts its prompt
    (:func:`resadapt.errors.validate_question`); the trainer and the evaluator both load this way.
    """
    examples, skipped = read_examples(path, benchmark, video_root)
    kept = []
    for example in examples:
        try:
            validate_question(example.prompt())
        except QuestionError as err:
            skipped[QUESTION_REJECTED] += 1
            logger.warning("skipping a row of %s (%s): %s", path, example.video, err)
            continue
        kept.append(example)
    if not kept:
        raise DataError(f"{path} has no usable rows (skipped: {dict(skipped)})")
    return kept[:limit], skipped
