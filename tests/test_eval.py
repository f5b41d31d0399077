"""The evaluator end to end: tiny random Qwen2.5-VL, real synthetic videos (CPU, ~12 s + imports).

One module-scoped run covers the grid (5 policies incl. learned, 3 retention budgets of which one
is infeasible, one token cap, 2 frame counts) plus a shared video and an unreadable one; the tests
read its outputs. Bad arguments are checked without loading a backbone.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import struct
from collections import Counter

import numpy as np
import pytest

from resadapt import eval as evaluator
from resadapt import eval_config, report
from resadapt.backbone import Backbone
from resadapt.pipeline import Pipeline
from resadapt.world import synth
from tests.allocators import write_tiny_allocator
from tests.media import write_text_as_video

BACKBONE = "tiny-random-qwen2.5-vl"
SIZE = 112
"""Frame side of the synthetic videos: 4 × 4 = 16 visual tokens per chunk at full resolution."""
BUDGETS = (0.05, 0.25, 0.5)
"""0.05 is below the smallest size of every chunk (1 of 16 tokens): no example fits it."""
TOKEN_CAP = 20
FRAMES = (4, 6)
POLICIES = ("vanilla", "uniform", "content", "random", "learned")
NUM_VIDEOS = 2
NUM_EXAMPLES = NUM_VIDEOS + 2
"""Two videos, a second question on the first, and a row whose video is a text file."""
READABLE = NUM_EXAMPLES - 1
GRID = 1 + (len(POLICIES) - 1) * (len(BUDGETS) + 1)
"""Rows per frame count: vanilla once, every other policy at each budget and the token cap."""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rows_path = synth.write_dataset(root, NUM_VIDEOS, seed=0, task="main", size=SIZE)
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    rows.append(rows[0] | {"question": "Which way do the stripes on the card run?"})
    write_text_as_video(root / "videos" / "broken.mp4")
    rows.append(rows[1] | {"video": "videos/broken.mp4"})
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows_path


@pytest.fixture(scope="module")
def allocator_dir(tmp_path_factory):
    return write_tiny_allocator(tmp_path_factory.mktemp("allocator"), Backbone.load(BACKBONE))


@pytest.fixture(scope="module")
def run(data, allocator_dir, tmp_path_factory):
    """One full evaluation; returns (out folder, stdout, decode calls by (video, frames))."""
    out = tmp_path_factory.mktemp("out")
    decodes: Counter = Counter()
    real_decode = Pipeline.decode

    def counting_decode(self, path, request):
        decodes[(path, request.num_frames)] += 1
        return real_decode(self, path, request)

    argv = [
        "--data", str(data),
        "--backbone", BACKBONE,
        "--policies", f"vanilla,uniform,content,random,learned:{allocator_dir}",
        "--budgets", ",".join(map(str, BUDGETS)),
        "--max-visual-tokens", str(TOKEN_CAP),
        "--frames", ",".join(map(str, FRAMES)),
        "--max-new-tokens", "2",
        "--out", str(out),
    ]  # fmt: skip
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setattr(Pipeline, "decode", counting_decode)
        assert evaluator.main(argv) == 0
    return out, stdout.getvalue(), decodes


def _csv_rows(out):
    with (out / "results.csv").open() as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _records(out):
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def test_outputs_have_the_columns_and_one_row_per_cell(run):
    out, _, _ = run
    columns, rows = _csv_rows(out)
    assert tuple(columns) == report.ROW_COLUMNS
    assert len(rows) == GRID * len(FRAMES)
    results = json.loads((out / "results.json").read_text())
    assert results["backbone"] == BACKBONE and len(results["rows"]) == len(rows)
    for frames in FRAMES:
        cells = [r for r in results["rows"] if r["frames"] == frames]
        assert Counter(r["policy"] for r in cells) == {"vanilla": 1} | {
            p: len(BUDGETS) + 1 for p in POLICIES[1:]
        }


def test_budget_is_a_ceiling_and_vanilla_keeps_full_resolution(run):
    out, _, _ = run
    rows = json.loads((out / "results.json").read_text())["rows"]
    for r in rows:
        assert r["unreadable"] == 1
        if r["policy"] == "vanilla":
            assert r["mean_retention"] == 1.0 and r["examples"] == READABLE
            assert r["mean_scale_spread"] == 0.0
        elif r["budget"] == min(BUDGETS):  # infeasible: counted, left out, no numbers
            assert r["examples"] == 0 and r["over_budget"] == READABLE
            assert r["accuracy"] is None and r["mean_retention"] is None
        elif r["budget"] is not None:
            assert r["examples"] == READABLE and r["mean_retention"] <= r["budget"]
            assert 0 <= r["accuracy"] <= 1
        else:
            assert r["max_visual_tokens"] == TOKEN_CAP and r["mean_visual_tokens"] <= TOKEN_CAP
    for rec in _records(out):
        if rec["status"] == "ok" and rec["budget"] is not None:
            assert rec["retention"] <= rec["budget"]  # per example, not only on average
        if rec["status"] == "ok" and rec["max_visual_tokens"] is not None:
            assert rec["visual_tokens"] <= TOKEN_CAP


def test_each_video_is_decoded_once_per_frame_count(run):
    _, _, decodes = run
    assert len(decodes) == (NUM_VIDEOS + 1) * len(FRAMES)  # the broken file is tried once too
    assert set(decodes.values()) == {1}


def test_records_one_line_per_example_policy_budget_and_frame_count(run):
    out, _, _ = run
    records = _records(out)
    assert len(records) == NUM_EXAMPLES * GRID * len(FRAMES)
    assert Counter(r["status"] for r in records) == {
        "unreadable": GRID * len(FRAMES),
        "over_budget": READABLE * (len(POLICIES) - 1) * len(FRAMES),
        "ok": READABLE * (GRID - len(POLICIES) + 1) * len(FRAMES),
    }
    ok = [r for r in records if r["status"] == "ok"]
    for r in ok:
        assert r["num_frames"] == r["frames"] and len(r["scales"]) == r["num_frames"] // 2
        assert sum(r["chunk_tokens"]) == r["visual_tokens"]
        assert r["latency_s"] >= r["backbone_s"] > 0 and r["correct"] in (0.0, 1.0)
        assert {"video", "question", "gold", "response"} <= r.keys()
    learned = [r for r in ok if r["policy"] == "learned"]
    assert len(learned) == READABLE * (len(BUDGETS) - 1 + 1) * len(FRAMES)
    # every row's spread is the mean within-video std of its records' fitted scales
    rows = json.loads((out / "results.json").read_text())["rows"]
    for row in (r for r in rows if r["examples"]):
        cell = [
            np.std(r["scales"])
            for r in ok
            if (r["policy"], r["budget"], r["max_visual_tokens"], r["frames"])
            == (row["policy"], row["budget"], row["max_visual_tokens"], row["frames"])
        ]
        assert row["mean_scale_spread"] == pytest.approx(float(np.mean(cell)))


def test_frontier_png_is_a_valid_image_with_one_panel_per_frame_count(run):
    """Two frame counts: two columns; two rows (against retention, against end-to-end time)."""
    out, _, _ = run
    assert not list(out.glob("frontier_*.png"))  # one task: no per-task frontiers
    png = (out / "frontier.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width == pytest.approx(11 / 8.4 * height, rel=0.02) and height > 600
    assert len(png) > 10_000


def test_printed_table_lists_every_row(run):
    _, stdout, _ = run
    lines = stdout.splitlines()
    assert lines[0].split() == [
        "policy", "budget", "frames", "n", "accuracy", "retention", "+probe", "tokens", "spread",
        "latency",
    ]  # fmt: skip
    table = lines[2 : 2 + GRID * len(FRAMES)]
    assert [line.split()[0] for line in table[:GRID]] == ["vanilla"] + [
        p for p in POLICIES[1:] for _ in range(len(BUDGETS) + 1)
    ]
    assert any(f"{TOKEN_CAP} tokens" in line for line in table)


def test_limit_batch_size_and_fps_sampling(data, tmp_path):
    out = tmp_path / "out"
    argv = ["--data", str(data), "--backbone", BACKBONE, "--policies", "vanilla,uniform"]
    argv += ["--budgets", "0.5,none", "--limit", "2", "--batch-size", "1"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert evaluator.main([*argv, "--max-new-tokens", "1", "--out", str(out)]) == 0
    _, rows = _csv_rows(out)
    assert [(r["policy"], r["budget"], r["frames"], r["examples"]) for r in rows] == [
        ("vanilla", "", "2 fps", "2"),
        ("uniform", "0.5", "2 fps", "2"),
        ("uniform", "", "2 fps", "2"),  # no cap: the policy's own allocation (scale 0.5)
    ]
    records = _records(out)
    assert len(records) == 2 * 3
    for r in records:
        if r["policy"] == "uniform" and r["budget"] is None:
            assert set(r["scales"]) == {0.5} and r["retention"] < 0.5


def test_policy_list_parsing():
    specs = eval_config.parse_policies("vanilla, learned:a,learned:b")
    assert [s.label for s in specs] == ["vanilla", "learned:a", "learned:b"]
    assert [s.allocator for s in specs] == [None, "a", "b"]
    assert eval_config.parse_policies("learned:a")[0].label == "learned"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--data": "missing.jsonl"}, "does not exist"),
        ({"--budgets": "0.25,1.5"}, "1.5"),
        ({"--budgets": "half"}, "half"),
        ({"--policies": "vanilla,fancy"}, "fancy"),
        ({"--policies": "learned:/no/such/allocator"}, "/no/such/allocator"),
        ({"--max-visual-tokens": "0"}, "positive"),
        ({"--frames": "0"}, "--frames"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_line(data, tmp_path, capsys, change, message):
    args = {"--data": str(data), "--backbone": BACKBONE, "--out": str(tmp_path)} | change
    if change.get("--data") == "missing.jsonl":
        args["--data"] = str(tmp_path / "missing.jsonl")
    assert evaluator.main([x for kv in args.items() for x in kv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not (tmp_path / "results.csv").exists()


def test_per_task_rows_add_up_to_the_row(tmp_path):
    """A dataset of several tasks gets each row's numbers per task, from the same records."""
    rows_path = synth.write_dataset(tmp_path / "d", 4, seed=3, task="mixed", size=SIZE)
    tasks = Counter(json.loads(line)["task"] for line in rows_path.read_text().splitlines())
    assert set(tasks) == {"main", "count"}
    out = tmp_path / "out"
    argv = [
        "--data", str(rows_path), "--backbone", BACKBONE, "--policies", "vanilla,uniform",
        "--budgets", "0.5", "--max-new-tokens", "2", "--out", str(out),
    ]  # fmt: skip
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert evaluator.main(argv) == 0
    records = _records(out)
    for row in json.loads((out / "results.json").read_text())["rows"]:
        by_task = row["by_task"]
        assert {t: v["examples"] for t, v in by_task.items()} == dict(tasks)
        mine = [r for r in records if r["policy"] == row["policy"] and r["budget"] == row["budget"]]
        for task, numbers in by_task.items():
            correct = [r["correct"] for r in mine if r["task"] == task]
            assert numbers["accuracy"] == pytest.approx(np.mean(correct))
        weighted = sum(v["accuracy"] * v["examples"] for v in by_task.values())
        assert weighted / row["examples"] == pytest.approx(row["accuracy"])
    columns, _ = _csv_rows(out)
    assert "count_accuracy" in columns and "main_mean_e2e_s" in columns
    assert "per task" in stdout.getvalue()
    for task in ("main", "count"):  # a frontier per question type beside the overall one
        png = (out / f"frontier_{task}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png != (out / "frontier.png").read_bytes()
