"""The app's chat served on localhost with the bundled pair, driven through gradio_client
(``/chat``, history in and out), plus resadapt.chat_ui's messages, strip and chart rows."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import app
from resadapt import chat_ui, ui
from resadapt.chat import HistoryError, Turn
from resadapt.config import ModelConfig, Request
from resadapt.pipeline import Pipeline, load_pipeline
from tests import test_app
from tests.test_chat import PURPLE, VIDEO, YELLOW

url = test_app.url  # its app fixture, serving this module's ``pipeline``

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    """The bundled pair (test_app's ``url`` fixture serves it)."""
    return load_pipeline(ModelConfig())


@pytest.fixture(scope="module")
def bundled(pipeline) -> Pipeline:
    return pipeline


@pytest.fixture(scope="module")
def client(url) -> Client:
    return Client(url, verbose=False)


def test_chat_endpoint_takes_video_question_history_then_defaults(client):
    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/chat"]
    params = params["parameters"]
    assert [p["parameter_name"] for p in params[:3]] == ["video", "question", "history"]
    defaults = {p["parameter_name"]: p["parameter_default"] for p in params[3:]}
    assert defaults["policy"] == "learned" and defaults["budget"] == ui.DEFAULT_RETENTION


def test_chat_endpoint_two_cards_the_budget_moves(client, bundled):
    """The issue's conversation through gradio_client: each turn answers as vanilla answers that
    question alone; the follow-up's largest chunk is the yellow card's (chunk 1)."""
    video = handle_file(VIDEO)
    history, first = client.predict(video, PURPLE, [], api_name="/chat")
    history, second = client.predict(video, YELLOW, history, api_name="/chat")
    for turn, question in ((first, PURPLE), (second, YELLOW)):
        alone = bundled.ask(VIDEO, Request(question=question, policy="vanilla"))
        assert turn["answer"] == alone.answer
        assert turn["visual_tokens"] <= 0.15 * turn["vanilla_visual_tokens"]
    largest = [int(np.argmax([c["visual_tokens"] for c in t["chunks"]])) for t in (first, second)]
    assert largest == [0, 1]
    single = bundled.ask(VIDEO, Request(question=PURPLE, budget=0.15)).to_json()
    assert {**first, "timings": None} == {**single, "timings": None}
    turns = chat_ui.turns_from_messages(history)
    assert turns == [Turn(PURPLE, first["answer"]), Turn(YELLOW, second["answer"])]
    notes = [m for m in history if chat_ui.is_budget_note(m)]
    assert [n["metadata"]["title"].split(":")[0] for n in notes] == ["turn 1", "turn 2"]
    assert f"{second['visual_tokens']} of {second['vanilla_visual_tokens']}" in str(notes[1])


def test_a_bad_turn_is_one_sentence_and_the_chat_goes_on(client, tmp_path):
    with pytest.raises(AppError, match="question is empty"):
        client.predict(handle_file(VIDEO), "  ", [], api_name="/chat")
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    with pytest.raises(AppError, match="not a video file"):
        client.predict(handle_file(str(bad)), "What?", [], api_name="/chat")
    history, turn = client.predict(handle_file(VIDEO), PURPLE, [], api_name="/chat")
    assert turn["answer"] and len(history) == 3


# ---------------------------------------------------------------------------------------- views
def test_chat_views_strip_and_moved_chart(bundled):
    chat = chat_ui.make_chat(bundled)
    form = ui.Form(PURPLE)
    *streamed, first = chat_ui.chat_views(chat, VIDEO, form, [], [])
    assert streamed and first.results is not None and len(first.messages) == 3
    *_, second = chat_ui.chat_views(chat, VIDEO, ui.Form(YELLOW), first.messages, first.results)
    assert len(second.results) == 2 and chat.cache.misses == 1 and chat.cache.hits == 1
    rows = second.moved
    assert list(rows.columns) == list(chat_ui.MOVED_COLUMNS)
    assert rows["turn"].unique().tolist() == ["turn 1", "turn 2"]
    for label, result in zip(rows["turn"].unique(), second.results, strict=True):
        per_turn = rows[rows["turn"] == label]
        assert per_turn.groupby("chunk")["tokens"].first().sum() == result["visual_tokens"]
    strip = second.messages[-1]["content"]
    assert strip.startswith("`▁█▁▁▁▁▁▁`") and "largest: chunk 1 (frames 2, 3)" in strip


def test_turns_are_read_back_from_message_dicts():
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Q1"}], "metadata": None},
        {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
        {"role": "assistant", "content": "`█`", "metadata": {"title": "turn 1: 3 of 9"}},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": chat_ui.EMPTY_ANSWER},
        {"role": "user", "content": "Q3"},  # not answered yet (stopped): left out
    ]
    assert chat_ui.turns_from_messages(messages) == [Turn("Q1", "A"), Turn("Q2", "")]
    with pytest.raises(HistoryError, match="a chat message is a dict"):
        chat_ui.turns_from_messages([["Q1", "A"]])


def test_a_cached_example_gets_every_output_at_once(bundled):
    app.build_demo(bundled)
    example = ui.example_rows()[1]
    answer, tokens, scale, gallery, summary, result = app.answer_example(*example)
    assert answer == result["answer"] and len(tokens) == len(result["frames"])
    assert gallery and "total" in summary


def test_readme_chat_snippet_runs(client, monkeypatch, capsys):
    section = (ROOT / "docs" / "usage.md").read_text().split("## App", 1)[1]
    snippets = re.findall(r"```python\n(.*?)```", section, re.S)
    chat = next(s for s in snippets if "/chat" in s)
    code = (snippets[0] + chat).replace("http://127.0.0.1:7860/", client.src)
    monkeypatch.chdir(ROOT)
    exec(code, {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("purple B [36, 1,") and lines[-1].startswith("yellow D [1, 36,")
