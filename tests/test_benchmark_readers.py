"""Native benchmark readers: each benchmark's published schema, written small, read into our rows.

Files are written with pandas / pyarrow (parquet) or json in the exact columns the benchmarks
publish, next to generated H.264 videos; one row per benchmark names a video that is not there.
Two evaluator runs (Video-MME per duration, Charades-STA IoU) and one trainer step go end to end.
"""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from resadapt import benchmark_readers
from resadapt import eval as evaluator
from resadapt.benchmark_readers import VIDEO_MISSING, Breakdown
from resadapt.data import load_examples
from resadapt.errors import DataError
from tests.media import write_video

BACKBONE = "tiny-random-qwen2.5-vl"
FAST = ["--backbone", BACKBONE, "--frames", "4", "--max-new-tokens", "2", "--budgets", "0.5"]
FAST += ["--policies", "vanilla,uniform", "--batch-size", "4"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Video root with a.mp4, b.mp4 (and folders the benchmarks' layouts use)."""
    root = tmp_path_factory.mktemp("bench")
    for name in ("a", "b"):
        write_video(root / f"{name}.mp4", num_frames=12, fps=4, height=112, width=112)
    (root / "perception" / "videos").mkdir(parents=True)
    write_video(root / "perception" / "videos" / "c.mp4", num_frames=8, height=112, width=112)
    (root / "nturgbd_convert" / "frames_c").mkdir(parents=True)  # an MVBench frame folder
    return root


def write_parquet(path, rows):
    pd.DataFrame(rows).to_parquet(path)
    return path


def videomme_file(root):
    rows = [
        {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Art",
         "url": "https://x", "videoID": vid, "question_id": f"001-{i}", "task_type": "Counting",
         "question": "How many boxes?", "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."],
         "answer": "B"}
        for i, vid in enumerate(["a", "b", "missing"])
    ]  # fmt: skip
    rows[1]["duration"] = "long"
    return write_parquet(root / "videomme.parquet", rows)


def charades_file(root):
    rows = [
        {"video": "a.mp4", "caption": "a person opens a door", "timestamp": [0.5, 2.0]},
        {"video": "b", "caption": "someone sits down", "timestamp": [1.0, 2.5]},
        {"video": "gone.mp4", "caption": "a person laughs", "timestamp": [0.0, 1.0]},
    ]
    return write_parquet(root / "charades.parquet", rows)


def test_videomme_options_lose_their_letters_and_duration_is_the_category(root):
    examples, skipped = load_examples(videomme_file(root), benchmark="videomme", video_root=root)
    assert skipped == {VIDEO_MISSING: 1}
    assert [e.options for e in examples][0] == ["One.", "Two.", "Three.", "Four."]
    assert examples[0].prompt().count("A. ") == 1
    assert [e.gold() for e in examples] == ["B", "B"]
    assert [e.extra["category"] for e in examples] == ["short", "long"]
    assert examples[0].video == str(root / "a.mp4")


def test_longvideobench_drops_na_options_and_letters_the_correct_choice(root):
    row = {"video_id": "v", "id": "q1", "video_path": "a.mp4", "subtitle_path": "a.json",
           "correct_choice": 2, "question": "What colour?", "option0": "red", "option1": "green",
           "option2": "blue", "option3": "N/A", "option4": "N/A", "duration": 3.0,
           "duration_group": 15, "question_category": "S2E", "topic_category": "NP-News",
           "starting_timestamp_for_subtitles": 0}  # fmt: skip
    path = root / "lvb_val.json"
    path.write_text(json.dumps([row, row | {"video_path": "nope.mp4"}]))
    (e,), skipped = load_examples(path, benchmark="longvideobench", video_root=root)
    assert e.options == ["red", "green", "blue"] and e.gold() == "C"
    assert e.extra["category"] == "15" and skipped[VIDEO_MISSING] == 1


def test_mlvu_reads_the_options_out_of_the_question(root):
    row = {"video_name": "a.mp4", "duration": 3.0, "task_type": "count", "question_id": "1",
           "question": "How many times?\n(A) 1\n(B) 2\n(C) 3\n(D) 4",
           "candidates": ["1", "2", "3", "4"], "answer": "(C) 3"}  # fmt: skip
    path = write_parquet(root / "mlvu.parquet", [row])
    (e,), _ = load_examples(path, benchmark="mlvu", video_root=root)
    assert e.question == "How many times?" and e.options == ["1", "2", "3", "4"]
    assert e.gold() == "C" and e.extra["category"] == "count"


def test_mvbench_reads_a_folder_of_task_jsons_with_text_answers(root):
    folder = root / "json"
    folder.mkdir(exist_ok=True)
    row = {"video": "c.mp4", "question": "What changes?", "candidates": ["x", "y"], "answer": "y"}
    (folder / "state_change.json").write_text(json.dumps([row]))
    (folder / "fine_grained_pose.json").write_text(json.dumps([row | {"video": "frames_c"}]))
    (e,), skipped = load_examples(folder, benchmark="mvbench", video_root=root)
    assert e.video == str(root / "perception" / "videos" / "c.mp4")
    assert e.gold() == "B" and e.extra["category"] == "state_change"
    assert skipped == {benchmark_readers.FRAME_FOLDER: 1}


def test_nextqa_multiple_choice_integer_answer(root):
    row = {"video": "b", "frame_count": 12, "question": "why?", "answer": 4, "qid": 1, "type": "CW"}
    row |= {f"a{i}": f"reason {i}" for i in range(5)}
    path = write_parquet(root / "nextqa.parquet", [row])
    (e,), _ = load_examples(path, benchmark="nextqa", video_root=root)
    assert e.video == str(root / "b.mp4") and e.gold() == "E" and e.extra["category"] == "CW"


def test_charades_rows_are_temporal_grounding(root):
    examples, skipped = load_examples(
        charades_file(root), benchmark="charades_sta", video_root=root
    )
    assert [e.answer for e in examples] == ["0.50 - 2.00", "1.00 - 2.50"]
    assert all(e.problem_type == "temporal_iou" for e in examples)
    assert "opens a door" in examples[0].question and skipped[VIDEO_MISSING] == 1


def test_bad_inputs_are_one_sentence(root, tmp_path):
    with pytest.raises(DataError, match="unknown benchmark 'ego4d'"):
        load_examples(root / "x", benchmark="ego4d", video_root=root)
    with pytest.raises(DataError, match="not a folder"):
        load_examples(root / "x", benchmark="videomme", video_root=tmp_path / "none")
    wrong = write_parquet(tmp_path / "wrong.parquet", [{"video": "a.mp4", "q": "?"}])
    with pytest.raises(DataError, match="does not look like videomme"):
        load_examples(wrong, benchmark="videomme", video_root=root)
    with pytest.raises(DataError, match=r"holds no \*\.json files"):
        load_examples(tmp_path, benchmark="mvbench", video_root=root)


def test_breakdown_mlvu_is_the_mean_of_task_accuracies():
    b = Breakdown("mlvu")
    for category, correct in [("count", 1), ("count", 1), ("count", 0), ("order", 0)]:
        b.add({"status": "ok", "category": category, "correct": float(correct)})
    b.add({"status": "over_budget", "category": "order"})
    cols = b.columns()
    assert cols["task=count"] == pytest.approx(2 / 3) and cols["task=order"] == 0
    assert cols["score"] == pytest.approx((2 / 3 + 0) / 2)  # M-Avg, not 2/4


def test_breakdown_charades_recall_at_iou_and_miou():
    b = Breakdown("charades_sta")
    for iou in (0.2, 0.5, 0.8):
        b.add({"status": "ok", "category": None, "correct": iou})
    cols = b.columns()
    assert cols["iou@0.3"] == pytest.approx(2 / 3) and cols["iou@0.5"] == pytest.approx(2 / 3)
    assert cols["iou@0.7"] == pytest.approx(1 / 3) and cols["miou"] == pytest.approx(0.5)


def _results(out):
    results = json.loads((out / "results.json").read_text())
    with (out / "results.csv").open() as f:
        return results, list(csv.DictReader(f))


def test_eval_videomme_reports_accuracy_per_duration(root, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--benchmark", "videomme", "--data", str(videomme_file(root))]
    assert evaluator.main([*argv, "--video-root", str(root), "--out", str(out), *FAST]) == 0
    results, rows = _results(out)
    assert results["skipped_rows"] == {VIDEO_MISSING: 1}
    assert [r["policy"] for r in results["rows"]] == ["vanilla", "uniform"]
    for row, flat in zip(results["rows"], rows, strict=True):
        assert set(row["benchmark"]) == {"score", "duration=long", "duration=short"}
        assert float(flat["duration=short"]) == row["benchmark"]["duration=short"]
    assert "duration=short" in capsys.readouterr().out


def test_eval_charades_reports_iou_thresholds(root, tmp_path):
    out = tmp_path / "out"
    argv = ["--benchmark", "charades_sta", "--data", str(charades_file(root))]
    assert evaluator.main([*argv, "--video-root", str(root), "--out", str(out), *FAST]) == 0
    results, rows = _results(out)
    for row in results["rows"]:
        assert set(row["benchmark"]) == {"score", "iou@0.3", "iou@0.5", "iou@0.7", "miou"}
        assert row["benchmark"]["miou"] == pytest.approx(row["accuracy"])


def test_video_root_without_benchmark_is_refused(tmp_path, capsys):
    argv = ["--data", "x.jsonl", "--video-root", str(tmp_path), "--out", str(tmp_path)]
    assert evaluator.main(argv) == 2
    assert "needs --benchmark" in capsys.readouterr().err


def test_trainer_reads_a_benchmark(root, tmp_path):
    from resadapt.train import main

    argv = ["--benchmark", "videomme", "--data", str(videomme_file(root))]
    argv += ["--video-root", str(root), "--backbone", BACKBONE, "--out-dir", str(tmp_path)]
    argv += ["--steps", "1", "--num-frames", "4", "--prompts-per-step", "2", "--num-rollouts"]
    argv += ["2", "--max-new-tokens", "2", "--checkpoint-every", "0", "--hidden-dim", "32"]
    argv += ["--num-layers", "1", "--num-heads", "2", "--attention-weight", "0"]
    assert main(argv) == 0
    config = json.loads((tmp_path / "final" / "train_config.json").read_text())
    assert config["benchmark"] == "videomme" and config["video_root"] == str(root)
    assert (tmp_path / "metrics.jsonl").read_text().count('"split": "train"') == 1
