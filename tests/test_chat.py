"""A chat about one video (resadapt.chat and ``ask --chat``) on the tiny random families and the
bundled pair: a follow-up holds exactly its own allocation's visual tokens, a two-turn prompt is
the native sequence at a uniform scale, the decode cache, and the issue's two-card conversation."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from resadapt import ask
from resadapt.assets import EXAMPLES
from resadapt.backbone import Backbone
from resadapt.chat import Chat, ChatConfig, DecodeCache, HistoryError, Turn
from resadapt.config import ModelConfig, Request
from resadapt.pipeline import Pipeline, load_pipeline
from resadapt.world import TINY_BACKBONES
from tests.templates import with_real_template
from tests.test_backbone import QUESTION, chunked, clip, native_inputs

HISTORY = [("Which digit is on the red card?", "7")]
"""One earlier turn, as text."""
VIDEO = str(EXAMPLES / "videos" / "main_00001.mp4")
"""The issue's clip: a purple card in frames 0-1, a yellow one in 2-3, a red one in 8-9."""
OPTIONS = "\nA. horizontal\nB. vertical\nC. diagonal (/)\nD. antidiagonal (\\)"
CUE = "\nAnswer with the option's letter."
PURPLE = "Which way do the stripes on the purple card run?" + OPTIONS + CUE
YELLOW = "Which way do the stripes on the yellow card run?" + OPTIONS + CUE


@pytest.fixture(scope="module", params=[(n, t) for n in TINY_BACKBONES for t in ("own", "real")])
def backbone(request):
    """Each tiny random family, with its own template and with the checkpoint-shaped one."""
    name, template = request.param
    bb = Backbone.load(name)
    return with_real_template(bb) if template == "real" else bb


# ---------------------------------------------------------------------------------------- prompt
def test_two_turn_chunked_equals_native_at_uniform_scale(backbone):
    frames, timestamps, metadata = clip(backbone, seed=2)
    text = backbone.prompt(QUESTION, HISTORY)
    video_token = backbone.processor.video_token
    assert text.count(video_token) == 1
    assert text.index(HISTORY[0][0]) < text.index(HISTORY[0][1]) < text.index(video_token)
    native = native_inputs(backbone, frames, metadata, text)
    ours = backbone.prepare([chunked(frames, timestamps)], [QUESTION], histories=[HISTORY])
    assert torch.equal(native["input_ids"], ours["input_ids"])
    with torch.no_grad():
        ref = backbone.model(**native).logits
        got = backbone.model(**ours).logits
    assert (ref - got).abs().max().item() <= 1e-4


def test_no_history_is_the_single_question_prompt(backbone):
    assert backbone.prompt(QUESTION, ()) == backbone.prompt(QUESTION)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    from tests.media import write_video

    path = tmp_path_factory.mktemp("chat") / "clip.mp4"
    return str(write_video(path, num_frames=24, fps=8, height=168, width=224))


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_a_follow_up_holds_exactly_its_own_allocation(name, clip_path, monkeypatch):
    """Turn 2 (another budget) re-allocates; its prompt holds the video once, at turn 2's sizes,
    and turn 1's question and answer as text."""
    pipeline = Pipeline(Backbone.load(name))
    chat = Chat(pipeline)
    first = Request(question=QUESTION, policy="uniform", budget=0.9, num_frames=8, max_new_tokens=3)
    one = chat.turn(clip_path, first)
    seen = []
    prepare = pipeline.backbone.prepare
    monkeypatch.setattr(
        pipeline.backbone, "prepare", lambda *a, **k: seen.append(prepare(*a, **k)) or seen[-1]
    )
    second = Request(
        question="Which digit is on the red card?", policy="attention", budget=0.3, num_frames=8
    )
    turns = [Turn(QUESTION, one.answer)]
    two = chat.turn(clip_path, second, turns)
    inputs = seen[-1]
    bb = pipeline.backbone
    video_tokens = int((inputs["input_ids"] == bb.model.config.video_token_id).sum())
    assert video_tokens == two.visual_tokens == sum(c["visual_tokens"] for c in two.chunks)
    assert bb.chunk_tokens(inputs) == [c["visual_tokens"] for c in two.chunks]
    assert two.visual_tokens != one.visual_tokens  # its own allocation, not turn 1's
    assert two.visual_tokens <= 0.3 * two.vanilla_visual_tokens
    text = bb.tokenizer.decode(inputs["input_ids"][0])
    earlier, last = text.rsplit("<|im_start|>user", 1)
    assert QUESTION in earlier and "<|vision_start|>" not in earlier  # turn 1 as text only
    assert "<|vision_start|>" in last and second.question in last  # the video in this turn
    assert chat.cache.hits == 1 and chat.cache.misses == 1  # decoded once


def test_history_none_answers_each_turn_alone(clip_path, monkeypatch):
    pipeline = Pipeline(Backbone.load(TINY_BACKBONES[0]))
    chat = Chat(pipeline, history="none")
    assert chat.context([Turn("a?", "b")]) == []
    assert Chat(pipeline).context([Turn(str(i), "x") for i in range(20)])[0] == ("12", "x")
    with pytest.raises(HistoryError, match="not one of text, none"):
        Chat(pipeline, history="all")
    with pytest.raises(HistoryError, match="not one of"):
        ChatConfig(history="both")
    with pytest.raises(HistoryError, match="an earlier turn is 16001 characters long"):
        Chat(pipeline).context([Turn("q" * 16_000, "a")])


# ---------------------------------------------------------------------------------------- cache
def test_the_cache_keys_by_content_and_sampling_and_stays_bounded(clip_path, tmp_path):
    pipeline = Pipeline(Backbone.load(TINY_BACKBONES[0]))
    calls = []

    def decode(path, request):
        calls.append(path)
        return pipeline.decode(path, request)

    cache = DecodeCache()
    request = Request(question="What?", num_frames=8)
    copy = tmp_path / "renamed.mp4"
    shutil.copy(clip_path, copy)
    a = cache.video(clip_path, request, decode)
    assert cache.video(str(copy), request, decode) is a  # same bytes, another name
    assert len(calls) == 1 and cache.hits == 1
    b = cache.video(clip_path, Request(question="What?", num_frames=4), decode)
    assert b is not a and len(calls) == 2 and len(cache) == 2
    small = DecodeCache(max_bytes=a.frames.nbytes + b.frames.nbytes - 1)
    small.video(clip_path, request, decode)
    small.video(clip_path, Request(question="What?", num_frames=4), decode)
    assert len(small) == 1 and small.nbytes <= small.max_bytes  # the older one left
    tiny = DecodeCache(max_bytes=1)
    tiny.video(clip_path, request, decode)
    assert len(tiny) == 0  # too large to keep: decoded again next time


# ---------------------------------------------------------------------------------------- bundled
@pytest.fixture(scope="module")
def bundled() -> Pipeline:
    return load_pipeline(ModelConfig())


def test_the_budget_moves_to_the_card_each_turn_asks_about(bundled):
    """The issue's conversation at budget 0.15: each turn answers as vanilla answers that
    question alone, and the follow-up's largest chunk is the yellow card's (chunk 1)."""
    chat = Chat(bundled)
    turns, results = [], []
    for question in (PURPLE, YELLOW):
        result = chat.turn(VIDEO, Request(question=question, budget=0.15), turns)
        alone = bundled.ask(VIDEO, Request(question=question, policy="vanilla"))
        assert result.answer == alone.answer
        turns.append(Turn(question, result.answer))
        results.append(result)
    assert [r.policy for r in results] == ["learned", "learned"]
    largest = [int(np.argmax([c["visual_tokens"] for c in r.chunks])) for r in results]
    assert largest == [0, 1]
    assert all(r.visual_tokens <= 0.15 * r.vanilla_visual_tokens for r in results)


# ---------------------------------------------------------------------------------------- ask
def run_chat(monkeypatch, capsys, lines: list[str], *flags: str) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    code = ask.main([VIDEO, "--chat", "--budget", "0.15", *flags])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ask_chat_json_prints_one_object_per_turn(monkeypatch, capsys, bundled):
    lines = [json.dumps(PURPLE), "", json.dumps(YELLOW)]  # a JSON string holds the line breaks
    code, out, _ = run_chat(monkeypatch, capsys, lines, "--json")
    assert code == 0
    turns = [json.loads(line) for line in out.splitlines()]
    assert len(turns) == 2
    single = bundled.ask(VIDEO, Request(question=PURPLE, budget=0.15)).to_json()
    assert turns[0].keys() == single.keys()
    assert {**turns[0], "timings": None} == {**single, "timings": None}
    for turn, question in zip(turns, (PURPLE, YELLOW), strict=True):
        alone = bundled.ask(VIDEO, Request(question=question, policy="vanilla"))
        assert turn["answer"] == alone.answer
    tokens = [c["visual_tokens"] for c in turns[1]["chunks"]]
    assert int(np.argmax(tokens)) == 1


def test_ask_chat_table_and_a_bad_line(monkeypatch, capsys):
    code, out, err = run_chat(monkeypatch, capsys, ["   ", "Which digit is on the red card?"])
    assert code == 0 and out.count("answer:") == 1 and "visual tokens" in out
    code, out, err = run_chat(monkeypatch, capsys, ['"' + "why " * 600 + '"', "What?"])
    assert code == 2 and "error: the question is" in err and out.count("answer:") == 1


def test_ask_needs_a_question_or_chat(capsys):
    assert ask.main([VIDEO]) == 2
    assert "a question, or --chat" in capsys.readouterr().err


def test_ask_chat_on_a_missing_video_is_one_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sys.stdin", io.StringIO("What?\nWhy?\n"))
    assert ask.main([str(tmp_path / "none.mp4"), "--chat"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1


def test_readme_lists_the_chat_module():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "resadapt/chat.py" in readme and "--chat" in readme


def test_the_history_benchmark_runs_on_the_bundled_examples():
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.chat_history", "--data", str(EXAMPLES / "data.jsonl")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("clips 3; turn-2 answers identical across history modes:")


def test_closing_a_turn_stops_generation(clip_path):
    """The chat's Stop (and a client that went away) closes the turn's generator, as for a single
    answer: generation stops at its next step, and the next turn runs."""
    from tests.test_streaming import _generating

    chat = Chat(Pipeline(Backbone.load(TINY_BACKBONES[0])))
    request = Request(question=QUESTION, policy="uniform", num_frames=8, max_new_tokens=1000)
    stream = chat.turn_stream(clip_path, request)
    next(stream)
    next(stream, None)
    stream.close()
    assert not _generating()
    assert chat.turn(clip_path, dataclasses.replace(request, max_new_tokens=2)).answer is not None
