"""Standard video benchmarks read natively: their published files and columns → our row schema.

Owns one reader per benchmark (Video-MME, LongVideoBench, MLVU, MVBench, NExT-QA multiple choice,
Charades-STA), where each one's videos lie under ``--video-root``, and the categories and scores
each benchmark reports (:class:`Breakdown`). Knows nothing about decoding, models or the grid.

A reader yields rows of :mod:`resadapt.data`'s schema plus ``category`` (the group the benchmark
reports by) and ``video`` as candidate paths under the video root; the first that exists is used.
Rows whose video is missing are skipped and counted (``video missing``), never fatal.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from resadapt.errors import DataError
from resadapt.grading import LETTERS

logger = logging.getLogger(__name__)

VIDEO_MISSING = "video missing"
"""Skip reason of a row whose video is not under the video root."""
FRAME_FOLDER = "video is a frame folder"
"""Skip reason of a row whose "video" is a folder of frames (some MVBench tasks): not a file."""
IOU_THRESHOLDS = (0.3, 0.5, 0.7)
"""Temporal IoU thresholds Charades-STA reports recall at (R@1, IoU ≥ t), besides mIoU."""
VIDEO_EXTENSIONS = (".mp4", ".MP4", ".mkv", ".webm", ".avi")
"""Extensions tried for benchmarks that name a video by its id only (Video-MME, NExT-QA)."""
GROUNDING_PROMPT = (
    'Give the start and end time, in seconds, of the moment described by: "{caption}". '
    "Answer as start - end."
)
"""Question of a Charades-STA row; ``grading.grade("temporal_iou", …)`` reads two numbers."""
MVBENCH_FOLDERS = {
    "object_interaction": "star/Charades_segment",
    "action_sequence": "star/Charades_segment",
    "action_prediction": "star/Charades_segment",
    "action_localization": "sta/sta_video_segment",
    "moving_count": "clevrer/video_validation",
    "fine_grained_pose": "nturgbd_convert",
    "character_order": "perception/videos",
    "object_shuffle": "perception/videos",
    "egocentric_navigation": "vlnqa",
    "moving_direction": "clevrer/video_validation",
    "episodic_reasoning": "tvqa/video_fps3_hq_segment",
    "fine_grained_action": "Moments_in_Time_Raw/videos",
    "scene_transition": "scene_qa/video",
    "state_change": "perception/videos",
    "moving_attribute": "clevrer/video_validation",
    "action_antonym": "ssv2_video_mp4",
    "unexpected_action": "FunQA_test/test",
    "counterfactual_inference": "clevrer/video_validation",
    "object_existence": "clevrer/video_validation",
    "action_count": "perception/videos",
}
"""MVBench task (its json file's stem) → video folder under the root (MVBench's ``video/``
layout, as lmms-eval's ``tasks/mvbench/utils.py::DATA_LIST`` maps it)."""
_LETTERED = re.compile(r"^\s*\(?([A-J])[.)]\s*(.*)$")  # "A. text", "(A) text"


# ---------------------------------------------------------------------------------------- files
def _plain(value):
    """A pandas / numpy cell as plain Python (arrays → lists, NaN → None)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_table(path: Path) -> list[dict]:
    """Rows of a .parquet, .json (a list, or a mapping of lists) or .jsonl file."""
    try:
        if path.suffix == ".parquet":
            import pandas as pd

            frame = pd.read_parquet(path)
            return [{k: _plain(v) for k, v in r.items()} for r in frame.to_dict(orient="records")]
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if path.suffix == ".json":
            data = json.loads(text)
            return data if isinstance(data, list) else [r for v in data.values() for r in v]
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    raise DataError(f"{path} is not .parquet, .json or .jsonl")


def _files(path: Path, pattern: str) -> list[Path]:
    """``path`` itself, or the files of folder ``path`` that match ``pattern`` (sorted)."""
    if path.is_dir():
        found = sorted(path.glob(pattern))
        if not found:
            raise DataError(f"{path} holds no {pattern} files")
        return found
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    return [path]


def _lettered(options: list[str]) -> list[str]:
    """Options without their "A. " / "(A) " prefixes (Example.prompt adds its own)."""
    return [(m.group(2) if (m := _LETTERED.match(o)) else o).strip() for o in options]


def _with_ext(name: str) -> list[str]:
    return [name] if Path(name).suffix else [name + ext for ext in VIDEO_EXTENSIONS]


# ---------------------------------------------------------------------------------------- readers
Row = tuple[dict, list[str]]
"""A row in our schema (without ``video``) and the video's candidate paths under the root."""


def videomme(path: Path) -> Iterator[Row]:
    """Video-MME parquet: options "A. …", answer letter, duration short / medium / long."""
    for r in read_table(path):
        names = _with_ext(str(r["videoID"]))
        row = {
            "question": r["question"],
            "options": _lettered(list(r["options"])),
            "answer": r["answer"],
            "problem_type": "multiple_choice",
            "category": r["duration"],
            "question_id": r.get("question_id"),
        }
        yield row, names + [f"data/{n}" for n in names]


def longvideobench(path: Path) -> Iterator[Row]:
    """LongVideoBench parquet / lvb_*.json: option0..4 ("N/A" pads), integer correct_choice."""
    for r in read_table(path):
        options = [r.get(f"option{i}") for i in range(5)]
        options = [str(o) for o in options if o is not None and str(o) != "N/A"]
        correct = r.get("correct_choice")
        row = {
            "question": r["question"],
            "options": options,
            "answer": LETTERS[int(correct)] if correct is not None else "",
            "problem_type": "multiple_choice",
            "category": str(r["duration_group"]),
            "question_category": r.get("question_category"),
        }
        yield row, [r["video_path"], f"videos/{r['video_path']}"]


def mlvu(path: Path) -> Iterator[Row]:
    """MLVU parquet / json: the option lines are inside ``question``; answer is a letter."""
    for r in read_table(path):
        lines = [line for line in str(r["question"]).splitlines() if line.strip()]
        listed = [line for line in lines if _LETTERED.match(line)]
        question = "\n".join(line for line in lines if not _LETTERED.match(line))
        options = _lettered(listed) if listed else [str(c) for c in r.get("candidates") or []]
        answer = str(r["answer"]).strip()
        if m := _LETTERED.match(answer):  # "(A) text" → the letter
            answer = m.group(1)
        row = {
            "question": question,
            "options": options,
            "answer": answer,
            "problem_type": "multiple_choice",
            "category": r["task_type"],
        }
        yield row, [r["video_name"], f"video/{r['video_name']}"]


def mvbench(path: Path) -> Iterator[Row]:
    """MVBench: one JSON list per task (``--data`` the json folder or one file); answer = text."""
    for file in _files(path, "*.json"):
        task = file.stem
        folder = MVBENCH_FOLDERS.get(task, task)
        for r in read_table(file):
            row = {
                "question": r["question"],
                "options": [str(c) for c in r["candidates"]],
                "answer": str(r["answer"]),
                "problem_type": "multiple_choice",
                "category": task,
            }
            yield row, [f"{folder}/{r['video']}", str(r["video"])]


def nextqa(path: Path) -> Iterator[Row]:
    """NExT-QA multiple choice parquet: a0..a4, integer answer; reported by question type."""
    for r in read_table(path):
        names = _with_ext(str(r["video"]))
        row = {
            "question": r["question"],
            "options": [str(r[f"a{i}"]) for i in range(5) if r.get(f"a{i}") is not None],
            "answer": LETTERS[int(r["answer"])],
            "problem_type": "multiple_choice",
            "category": r.get("type"),
        }
        yield row, names + [f"NExTVideo/{n}" for n in names]


def charades_sta(path: Path) -> Iterator[Row]:
    """Charades-STA parquet: caption and timestamp [start, end]; graded by temporal IoU."""
    for r in read_table(path):
        start, end = (float(t) for t in r["timestamp"])
        names = _with_ext(str(r["video"]))
        row = {
            "question": GROUNDING_PROMPT.format(caption=str(r["caption"]).strip()),
            "answer": f"{start:.2f} - {end:.2f}",
            "problem_type": "temporal_iou",
            "caption": r["caption"],
        }
        yield row, names + [f"Charades_v1_480/{n}" for n in names]


@dataclass(frozen=True)
class Benchmark:
    """A reader and what the benchmark reports."""

    read: Callable[[Path], Iterator[Row]]
    group: str | None
    """Name of the reported category (a column per value), or None."""
    score: str
    """Headline number: ``accuracy`` (over all examples), ``mean_of_groups`` (MLVU's M-Avg) or
    ``miou`` (Charades-STA; with recall at IOU_THRESHOLDS)."""


BENCHMARKS: dict[str, Benchmark] = {
    "videomme": Benchmark(videomme, "duration", "accuracy"),
    "longvideobench": Benchmark(longvideobench, "duration_group", "accuracy"),
    "mlvu": Benchmark(mlvu, "task", "mean_of_groups"),
    "mvbench": Benchmark(mvbench, "task", "accuracy"),
    "nextqa": Benchmark(nextqa, "type", "accuracy"),
    "charades_sta": Benchmark(charades_sta, None, "miou"),
}
"""Benchmark name (``--benchmark``) → reader and reporting."""
BENCHMARK_NAMES = tuple(BENCHMARKS)


def read_benchmark(name: str, data: str | Path, video_root: str | Path) -> tuple[list, Counter]:
    """Rows of our schema (``video`` resolved under ``video_root``) and skip reasons with counts.

    Raises DataError naming an unknown benchmark, a missing file or folder, or a row without a
    column the benchmark's files always have.
    """
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARK_NAMES)}")
    root = Path(video_root)
    if not root.is_dir():
        raise DataError(f"--video-root {root} is not a folder")
    path = Path(data)
    if not path.exists():
        raise DataError(f"{name} data {path} does not exist")
    rows, skipped = [], Counter()
    try:
        for row, candidates in BENCHMARKS[name].read(path):
            found = [root / c for c in candidates if (root / c).exists()]
            if not found:
                skipped[VIDEO_MISSING] += 1
                logger.debug("%s: no video among %s under %s", name, candidates, root)
            elif found[0].is_dir():
                skipped[FRAME_FOLDER] += 1
            else:
                rows.append(row | {"video": str(found[0])})
    except DataError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise DataError(
            f"{path} does not look like {name}: a row lacks or mangles {e} "
            f"(expected the columns of the published {name} files)"
        ) from e
    if skipped[VIDEO_MISSING]:
        logger.warning(
            "%s: %d row(s) skipped, their video is not under %s",
            name, skipped[VIDEO_MISSING], root,
        )  # fmt: skip
    return rows, skipped


# ---------------------------------------------------------------------------------------- scores
class Breakdown:
    """Running per-category totals of one result row; :meth:`columns` gives its reported numbers.

    Column names: ``score`` (the headline number, see :attr:`Benchmark.score`), ``<group>=<value>``
    (accuracy, or mIoU, per category), and for temporal grounding ``iou@t`` and ``miou``.
    """

    def __init__(self, benchmark: str):
        self.spec = BENCHMARKS[benchmark]
        self.count: Counter = Counter()
        self.total: Counter = Counter()
        self.hits: Counter = Counter()  # IoU threshold → examples at or above it

    def add(self, record: dict) -> None:
        if record["status"] != "ok":
            return
        category = record.get("category")
        self.count[category] += 1
        self.total[category] += record["correct"]
        for t in IOU_THRESHOLDS:
            self.hits[t] += record["correct"] >= t

    def columns(self) -> dict[str, float | None]:
        n = sum(self.count.values())
        by_group = {c: self.total[c] / self.count[c] for c in sorted(self.count, key=str)}
        out: dict[str, float | None] = {}
        if self.spec.score == "mean_of_groups":
            out["score"] = sum(by_group.values()) / len(by_group) if by_group else None
        else:
            out["score"] = sum(self.total.values()) / n if n else None
        if self.spec.score == "miou":
            for t in IOU_THRESHOLDS:
                out[f"iou@{t:g}"] = self.hits[t] / n if n else None
            out["miou"] = out["score"]
        if self.spec.group is not None:
            out |= {f"{self.spec.group}={c}": v for c, v in by_group.items()}
        return out


def format_breakdown(rows: list[dict]) -> str:
    """One line per result row: its policy, budget and frames, then the benchmark's columns."""
    lines = []
    for r in rows:
        columns = r.get("benchmark") or {}
        if not columns:
            continue
        budget = r["budget"] if r["budget"] is not None else r["max_visual_tokens"] or "-"
        shown = "  ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in columns.items())
        lines.append(f"{r['policy']:<12} {budget!s:>6} {r['frames']!s:>6}  {shown}")
    return "\n".join(lines)
