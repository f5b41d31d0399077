"""The Gradio app served on localhost and driven through gradio_client, plus resadapt.ui's views.

Covers the named endpoints (/answer returns the ask --json object, /compare runs policies at one
budget), bad input (one sentence, then the app keeps serving), the usage page's client snippet and
Spaces front matter. The tiny random Qwen2.5-VL keeps every request well under a second.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import app
from resadapt import ask, ui
from resadapt.assets import examples
from resadapt.backbone import Backbone
from resadapt.config import ModelConfig
from resadapt.errors import BudgetError, VideoError
from resadapt.pipeline import Pipeline, load_pipeline
from tests import media

ROOT = Path(__file__).resolve().parent.parent
BACKBONE = "tiny-random-qwen2.5-vl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(Backbone.load(BACKBONE))  # no allocator: learned is unavailable


@pytest.fixture(scope="module")
def url(pipeline):
    demo = app.build_demo(pipeline)
    port = free_port()
    demo.launch(
        prevent_thread_lock=True,
        server_name="127.0.0.1",
        server_port=port,
        max_file_size=ui.MAX_UPLOAD_BYTES,
        quiet=True,
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(url) -> Client:
    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def example() -> dict:
    rows = examples()
    assert len(rows) >= 2, "assets/examples/data.jsonl lists the bundled clips"
    return rows[1]


# ---------------------------------------------------------------------------------------- API
def test_endpoints_take_video_and_question_then_defaults(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name in ("/answer", "/compare"):
        params = endpoints[name]["parameters"]
        assert [p["parameter_name"] for p in params[:2]] == ["video", "question"]
        assert all(p["parameter_has_default"] for p in params[2:]), name
        defaults = {p["parameter_name"]: p["parameter_default"] for p in params[2:]}
        assert defaults["policy"] == "attention" and defaults["budget"] == ui.DEFAULT_RETENTION


def test_answer_returns_the_ask_json_object(client, example, capsys):
    got = client.predict(handle_file(example["video"]), example["question"], api_name="/answer")
    argv = [example["video"], example["question"], "--json", "--backbone", BACKBONE]
    assert ask.main([*argv, "--policy", "attention", "--budget", str(ui.DEFAULT_RETENTION)]) == 0
    want = json.loads(capsys.readouterr().out)
    assert got.keys() == want.keys()
    assert got["timings"].keys() == want["timings"].keys()
    assert {**got, "timings": None} == {**want, "timings": None}
    assert got["visual_tokens"] <= ui.DEFAULT_RETENTION * got["vanilla_visual_tokens"]


def test_compare_runs_each_policy_at_one_budget(client, example):
    out = client.predict(
        handle_file(example["video"]), example["question"], budget=0.4, api_name="/compare"
    )
    results = {r["policy"]: r for r in out["results"]}
    assert list(results) == ["attention", "keyframes", "prune", "uniform", "vanilla"]
    assert out["refused"] == []
    vanilla = results["vanilla"]["vanilla_visual_tokens"]
    assert out["visual_token_cap"] == int(0.4 * vanilla)
    assert results["attention"]["probe_visual_tokens"] > 0
    assert results["prune"]["visual_tokens"] == out["visual_token_cap"]
    assert results["prune"]["encoded_visual_tokens"] == vanilla
    assert any(c["dropped"] for c in results["keyframes"]["chunks"])
    for name in ("attention", "keyframes", "prune", "uniform"):
        assert results[name]["visual_tokens"] <= out["visual_token_cap"]
    assert results["vanilla"]["visual_tokens"] == vanilla
    assert len({r["timings"]["decode_s"] for r in out["results"]}) == 1  # decoded once


def _bad_inputs(tmp: Path, good: str) -> list[tuple[str, str, dict, str]]:
    """(video, question, other parameters, expected message) for each kind of bad request."""
    return [
        (str(media.write_text_as_video(tmp / "notes.mp4")), "What?", {}, "not a video file"),
        (str(media.write_truncated(good, tmp / "cut.mp4", keep=0.3)), "What?", {}, "corrupt"),
        (str(media.write_video(tmp / "a.m4a", audio_only=True)), "What?", {}, "no video stream"),
        (good, "   ", {}, "question is empty"),
        (good, "why? " * 500, {}, "characters long"),
        (good, "What?", {"policy": "learned"}, "allocator"),
        (good, "What?", {"max_visual_tokens": 1}, "below the minimum"),
    ]


def test_bad_requests_error_and_the_app_keeps_serving(client, example, tmp_path):
    for video, question, params, message in _bad_inputs(tmp_path, example["video"]):
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(video), question, **params, api_name="/answer")
    result = client.predict(handle_file(example["video"]), example["question"], api_name="/answer")
    assert result["visual_tokens"] > 0 and result["chunks"]


def test_readme_client_snippet_runs(url, monkeypatch, capsys):
    section = (ROOT / "docs" / "usage.md").read_text().split("## App", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "http://127.0.0.1:7860/" in snippet
    monkeypatch.chdir(ROOT)
    exec(snippet.replace("http://127.0.0.1:7860/", url), {})
    assert "vanilla" in capsys.readouterr().out


def test_spaces_front_matter_matches_requirements():
    front = (ROOT / "README.md").read_text().split("---\n")[1]
    meta = dict(line.split(":", 1) for line in front.splitlines() if ":" in line and line[0] != " ")
    meta = {k.strip(): v.strip().strip('"') for k, v in meta.items()}
    pin = re.search(r"^gradio==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == pin
    assert meta["app_file"] == "app.py" and meta["python_version"] and meta["title"]
    assert meta["emoji"] and "models" in meta


def test_no_gradio_under_resadapt():
    for path in (ROOT / "resadapt").rglob("*.py"):
        assert not re.search(r"^\s*(import|from) gradio", path.read_text(), re.M), path


# ---------------------------------------------------------------------------------------- views
def test_views_show_the_allocation(pipeline, example):
    views = list(ui.answer_views(pipeline, example["video"], ui.Form(example["question"])))
    first, last = views[0], views[-1]
    result = last.result
    num_frames = len(result["frames"])
    rows = first.budget
    assert len(rows) == num_frames and list(rows.columns[:5]) == [
        "time_s", "frame", "chunk", "scale", "tokens",
    ]  # fmt: skip
    assert rows.groupby("chunk")["tokens"].first().sum() == result["visual_tokens"]
    assert len(first.gallery) == num_frames
    for (image, caption), frame in zip(first.gallery, result["frames"], strict=True):
        chunk = result["chunks"][frame["chunk"]]
        assert f"{chunk['visual_tokens']} tokens" in caption
        assert f"{frame['height']}×{frame['width']}" in caption
        assert image.shape[2] == 3 and image.shape[0] >= frame["height"]
    assert "total" in last.summary and last.answer


def test_compare_decodes_once(pipeline, example, monkeypatch):
    calls = []
    decode = pipeline.decode
    monkeypatch.setattr(pipeline, "decode", lambda *a: calls.append(a) or decode(*a))
    out = ui.compare(pipeline, example["video"], ui.Form(example["question"], budget=None))
    assert len(calls) == 1
    spent = [r["visual_tokens"] for r in out["results"]]
    assert out["visual_token_cap"] == spent[0] and spent[1] <= spent[0]  # the first sets the cap


def test_duration_and_form_limits(pipeline, example, monkeypatch):
    monkeypatch.setattr(ui, "MAX_DURATION_S", 1.0)
    with pytest.raises(VideoError, match="min long"):
        ui.answer_json(pipeline, example["video"], ui.Form("What?"))
    with pytest.raises(VideoError, match="upload a video"):
        ui.answer_json(pipeline, None, ui.Form("What?"))
    with pytest.raises(BudgetError, match="whole number"):
        ui.Form("What?", max_visual_tokens=12.5).request()
    assert "unavailable" in dict((v, k) for k, v in ui.policy_choices(pipeline))["learned"]


def test_status_says_what_runs_where_from_and_why_the_default(pipeline, tmp_path):
    status = ui.status_markdown(pipeline)
    assert f"`{BACKBONE}` (built in code by name, random weights)" in status
    assert "meaningless" in status
    assert "**Default policy:** *attention* — no allocator is loaded" in status
    bundled = load_pipeline(ModelConfig())  # the bundled backbone and its allocator
    status = ui.status_markdown(bundled)
    assert "(bundled tiny world) — the bundled tiny Qwen2.5-VL" in status
    assert "trained against this backbone (checked when it was loaded)" in status
    assert "trains one attention head to look at the queried card" in status
    assert "**Default policy:** *learned* — an allocator is loaded for this backbone" in status
    assert ui.provenance(str(tmp_path)) == "local folder"
    assert ui.provenance("Qwen/Qwen2.5-VL-7B-Instruct") == "hub id"


def test_a_bundled_example_shows_its_expected_answer(example, tmp_path):
    """The app receives a copy of the example file: matched by name and question, and graded."""
    copy = tmp_path / Path(example["video"]).name
    copy.write_bytes(Path(example["video"]).read_bytes())
    bundled = load_pipeline(ModelConfig())
    *_, last = ui.answer_views(bundled, str(copy), ui.Form(example["question"]))
    right = last.result["answer"].strip() == example["answer"]
    assert f"**Expected answer** (bundled example): `{example['answer']}`" in last.summary
    assert (": right." if right else ": wrong.") in last.summary
    other = ui.answer_views(bundled, str(copy), ui.Form("Which way do the stripes run?"))
    assert "Expected answer" not in list(other)[-1].summary


def test_compare_lists_a_policy_that_cannot_meet_the_budget(pipeline, example):
    """keyframes below one full-resolution chunk: its one sentence in ``refused`` and the table,
    while the other policies still answer."""
    video = pipeline.decode(example["video"], ui.Form(example["question"]).request())
    full_chunk = pipeline.backbone.geometry.tokens(*video.base_size)
    chunks = len(video.frames) // 2
    assert chunks < full_chunk - 1  # room for every chunk at its smallest size
    form = ui.Form(example["question"], max_visual_tokens=full_chunk - 1)
    out = ui.compare(pipeline, example["video"], form)
    assert [r["policy"] for r in out["refused"]] == ["keyframes"]
    assert "cannot hold one" in out["refused"][0]["error"]
    assert "keyframes" not in [r["policy"] for r in out["results"]]
    table = ui.compare_table(out)
    row = table[table["policy"] == "keyframes"].iloc[0]
    assert row["answer"].startswith("refused: keyframes keeps whole chunks")
