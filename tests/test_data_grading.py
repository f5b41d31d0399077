"""Row validation with counted skips, and the four graders."""

import json

import pandas as pd
import pytest

from resadapt.data import read_examples
from resadapt.errors import DataError
from resadapt.grading import grade, parse_letter, temporal_iou


def test_jsonl_rows_are_validated_and_skips_counted(tmp_path):
    rows = [
        {
            "video": "a.mp4",
            "question": "Q?",
            "answer": "B",
            "options": ["x", "y"],
            "problem_type": "multiple_choice",
            "task": "main",
        },
        {"video": "b.mp4", "question": "Q?", "answer": "3", "problem_type": "numeric"},
        {"video": "c.mp4", "question": "", "answer": "3", "problem_type": "numeric"},
        {
            "video": "d.mp4",
            "question": "Q?",
            "answer": "z",
            "options": ["x", "y"],
            "problem_type": "multiple_choice",
        },
        {"video": "e.mp4", "question": "Q?", "answer": "1", "problem_type": "essay"},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    examples, skipped = read_examples(path)
    assert [e.video for e in examples] == [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    assert examples[0].gold() == "B" and examples[0].extra == {"task": "main"}
    assert "A. x\nB. y" in examples[0].prompt()
    assert sum(skipped.values()) == 4 and skipped["invalid JSON"] == 1


def test_parquet_rows(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame(
        [
            {
                "video": "/v.mp4",
                "question": "Which?",
                "answer": "y",
                "options": ["x", "y"],
                "problem_type": "multiple_choice",
            }
        ]
    ).to_parquet(path)
    examples, _ = read_examples(path)
    assert examples[0].options == ["x", "y"] and examples[0].gold() == "B"


def test_unreadable_data_files_are_boundary_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_examples(tmp_path / "none.jsonl")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match="neither"):
        read_examples(tmp_path / "x.csv")
    (tmp_path / "empty.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match="no valid rows"):
        read_examples(tmp_path / "empty.jsonl")


def test_graders():
    assert parse_letter("B. vertical", 4) == "B"
    assert parse_letter("The answer is (C)", 4) == "C"
    assert parse_letter("E", 4) is None
    assert grade("multiple_choice", "b", "B", 4) == 0.0  # a lower-case word is not a letter
    assert grade("multiple_choice", "B", "B", 4) == 1.0
    assert grade("exact", "Vertical.", "vertical") == 1.0
    assert grade("exact", "diagonal", "vertical") == 0.0
    assert grade("numeric", "about 3.1", "3") == 0.0  # tolerance 1 % of 3 = 0.03
    assert grade("numeric", "3.01", "3") == 1.0
    assert grade("numeric", "none", "3") == 0.0
    assert temporal_iou((1, 3), (2, 4)) == pytest.approx(1 / 3)
    assert grade("temporal_iou", "2.0, 4.0", "2,4") == 1.0
    assert grade("temporal_iou", "from 3 to 5", "2,4") == pytest.approx(1 / 3)
    assert grade("temporal_iou", "5", "2,4") == 0.0
