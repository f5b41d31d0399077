"""End to end on real generated video files: the pipeline, the ask CLI and its JSON contract."""

import json
import subprocess
import sys

import numpy as np
import pytest

from resadapt.ask import main
from resadapt.config import ModelConfig, Request
from resadapt.errors import BudgetError, QuestionError, VideoError
from resadapt.pipeline import load_pipeline
from resadapt.policies import POLICY_NAMES
from tests.media import write_text_as_video, write_truncated, write_video

QUESTION = "What is the stripe direction on the green card?"
FRAME_KEYS = {"index", "timestamp", "chunk", "scale", "height", "width"}
CHUNK_KEYS = {"frames", "scale", "height", "width", "visual_tokens", "encoded_tokens", "dropped"}
TOP_KEYS = {
    "answer", "backbone", "policy", "frames", "chunks", "visual_tokens",
    "vanilla_visual_tokens", "retention", "encoded_visual_tokens", "probe_visual_tokens",
    "allocator_warning", "notes", "timings",
}  # fmt: skip
TIMING_KEYS = {"decode_s", "allocate_s", "probe_s", "tower_s", "backbone_s", "total_s"}


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return str(
        write_video(
            tmp_path_factory.mktemp("v") / "clip.mp4", num_frames=40, fps=10, height=168, width=224
        )
    )


@pytest.fixture(scope="module")
def pipeline():
    return load_pipeline(ModelConfig(backbone="tiny-random-qwen2.5-vl"))


@pytest.mark.parametrize("policy", [p for p in POLICY_NAMES if p != "learned"])
@pytest.mark.parametrize("budget", [None, 0.3])
def test_result_accounts_for_every_token(pipeline, video, policy, budget):
    request = Request(question=QUESTION, policy=policy, budget=budget, num_frames=8)
    result = pipeline.ask(video, request).to_json()
    assert set(result) == TOP_KEYS and set(result["timings"]) == TIMING_KEYS
    assert len(result["frames"]) == 8 and len(result["chunks"]) == 4
    assert all(set(f) == FRAME_KEYS for f in result["frames"])
    assert all(set(c) == CHUNK_KEYS for c in result["chunks"])
    geometry = pipeline.backbone.geometry
    for chunk in result["chunks"]:
        assert chunk["encoded_tokens"] == geometry.tokens(chunk["height"], chunk["width"])
        if policy != "prune":  # prune keeps some of the encoded tokens (tests/test_peers.py)
            assert chunk["visual_tokens"] == chunk["encoded_tokens"]
    assert result["visual_tokens"] == sum(c["visual_tokens"] for c in result["chunks"])
    assert result["retention"] == pytest.approx(
        result["visual_tokens"] / result["vanilla_visual_tokens"], abs=1e-6
    )
    if policy == "vanilla":
        assert result["retention"] == 1.0
    elif budget is not None:
        assert result["visual_tokens"] <= int(budget * result["vanilla_visual_tokens"])
    # frames carry their source index, true time and the size of their chunk
    indices = [f["index"] for f in result["frames"]]
    assert indices == sorted(indices) and indices[0] == 0 and indices[-1] == 39
    assert [f["timestamp"] for f in result["frames"]] == pytest.approx([i / 10 for i in indices])
    for f in result["frames"]:
        chunk = result["chunks"][f["chunk"]]
        assert f["index"] in chunk["frames"] and f["height"] == chunk["height"]


def test_token_cap_and_retention_budget_take_the_tighter(pipeline, video):
    request = Request(question=QUESTION, policy="content", budget=0.9, max_visual_tokens=40)
    result = pipeline.ask(video, request).to_json()
    assert result["visual_tokens"] <= 40


def test_stream_grows_to_the_final_answer(pipeline, video):
    request = Request(question=QUESTION, policy="uniform", num_frames=4, max_new_tokens=6)
    results = [json.loads(json.dumps(r.to_json())) for r in pipeline.ask_stream(video, request)]
    assert results[0]["answer"] == "" and len(results) >= 2
    final = pipeline.ask(video, request).to_json()
    assert results[-1]["answer"] == final["answer"]
    assert results[-1]["timings"]["total_s"] > 0


def test_fps_sampling_uses_true_timestamps(pipeline, video):
    request = Request(question=QUESTION, policy="vanilla", fps=2.0)
    result = pipeline.ask(video, request).to_json()
    assert len(result["frames"]) % 2 == 0
    times = [f["timestamp"] for f in result["frames"]]
    assert np.allclose(np.diff(times), np.diff(times)[0], atol=0.11)


def test_bad_requests_raise_specific_errors(pipeline, video, tmp_path):
    with pytest.raises(QuestionError):
        Request(question="  ")
    with pytest.raises(QuestionError, match="limit"):
        Request(question="x" * 5000)
    with pytest.raises(BudgetError, match="1.5"):
        Request(question=QUESTION, budget=1.5)
    with pytest.raises(BudgetError):
        Request(question=QUESTION, num_frames=0)
    with pytest.raises(VideoError):
        pipeline.ask(str(write_text_as_video(tmp_path / "notes.mp4")), Request(question=QUESTION))
    with pytest.raises(BudgetError, match="below the minimum"):
        pipeline.ask(video, Request(question=QUESTION, policy="content", max_visual_tokens=3))


def test_cli_json_is_exactly_one_object(video, capsys):
    code = main(
        [video, QUESTION, "--backbone", "tiny-random-qwen3-vl", "--policy", "uniform",
         "--budget", "0.25", "--frames", "8", "--json"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    assert set(result) == TOP_KEYS and result["policy"] == "uniform"
    assert result["backbone"] == "tiny-random-qwen3-vl"
    assert result["retention"] <= 0.25


def test_cli_table(video, capsys):
    assert main([video, QUESTION, "--backbone", "tiny-random-qwen2.5-vl", "--frames", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("answer:") and "retention" in out and "decode" in out


def bad_input(case, video, tmp_path):
    """(video path, question, extra flags) for one kind of bad input."""
    path, question, extra = video, QUESTION, []
    if case == "missing":
        path = str(tmp_path / "nope.mp4")
    elif case == "directory":
        path = str(tmp_path)
    elif case == "text":
        path = str(write_text_as_video(tmp_path / "t.mp4"))
    elif case == "truncated":
        path = str(write_truncated(video, tmp_path / "cut.mp4", keep=0.02))
    elif case == "audio":
        path = str(write_video(tmp_path / "a.mp4", audio_only=True))
    elif case == "url":
        path = "https://example.com/video.mp4"
    elif case == "empty_q":
        question = ""
    elif case == "long_q":
        question = "why " * 1000
    elif case == "budget":
        extra = ["--budget", "0"]
    elif case == "frames":
        extra = ["--frames", "-2"]
    return path, question, ["--backbone", "tiny-random-qwen2.5-vl", *extra]


CASES = [
    "missing", "directory", "text", "truncated", "audio", "url", "empty_q", "long_q", "budget",
    "frames",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_cli_bad_input_is_one_error_line(case, video, tmp_path, capsys):
    path, question, flags = bad_input(case, video, tmp_path)
    assert main([path, question, *flags]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", ["text", "budget"])
def test_cli_process_exits_2_without_traceback(case, video, tmp_path):
    path, question, flags = bad_input(case, video, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "resadapt.ask", path, question, *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr


def test_the_python_snippet_in_the_usage_docs_runs(capsys):
    """docs/usage.md's "From Python" example, run as written: the bundled pair answers within the
    budget."""
    import re
    from pathlib import Path

    usage = Path(__file__).resolve().parents[1] / "docs" / "usage.md"
    section = usage.read_text().split("## From Python", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(snippet, {})
    answer, spent, _, vanilla, policy = capsys.readouterr().out.split()[-5:]
    assert policy == "learned" and 0 < int(spent) <= 0.15 * int(vanilla)
