"""The policy registry: a policy defined outside the library is one class, and once registered it is
listed, validated and run everywhere (the ask CLI, the evaluator's grid, the app's choices, the
pipeline); duplicate, malformed and unknown names are refused with one sentence."""

import dataclasses
import json

import numpy as np
import pytest

from resadapt import ask, cli, eval_config, policies, ui
from resadapt.backbone import Backbone
from resadapt.config import Request
from resadapt.errors import PolicyError
from resadapt.eval_config import EvalConfig
from resadapt.pipeline import Pipeline
from resadapt.policies import (
    MIN_SCALE,
    AllocationContext,
    Policy,
    Vanilla,
    make_policy,
    policy_class,
    policy_names,
    register_policy,
    unregister_policy,
)

BACKBONE = "tiny-random-qwen2.5-vl"
QUESTION = "What is on the first card?"
BUILT_IN = ("vanilla", "uniform", "random", "content", "learned", "attention", "keyframes", "prune")


@dataclasses.dataclass
class FirstChunk(Policy):
    """The first chunk at full resolution, every other at the lowest scale (resized to the budget).
    Defined here, outside the library: registering it is all it takes."""

    name = "first-chunk"
    description = "the opening chunk at full resolution, the rest at the lowest scale"

    def scales(self, ctx: AllocationContext) -> np.ndarray:
        scales = np.full(ctx.num_chunks, MIN_SCALE)
        scales[0] = 1.0
        return scales


@pytest.fixture
def first_chunk():
    register_policy(FirstChunk)
    try:
        yield FirstChunk.name
    finally:
        unregister_policy(FirstChunk.name)


def test_built_in_policies_register_in_order():
    assert policy_names() == BUILT_IN
    assert policies.POLICY_NAMES == BUILT_IN
    for name in BUILT_IN:
        cls = policy_class(name)
        assert cls.name == name and cls.description and "\n" not in cls.description


def test_a_registered_policy_is_in_the_registry(first_chunk):
    assert policy_names() == (*BUILT_IN, first_chunk)
    assert policies.POLICY_NAMES[-1] == first_chunk
    assert policy_class(first_chunk) is FirstChunk
    assert isinstance(make_policy(first_chunk, scale=0.3), FirstChunk)
    assert Request(QUESTION, policy=first_chunk).policy == first_chunk


def test_a_registered_policy_is_in_the_ask_help(first_chunk, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag: no word is wrapped
    with pytest.raises(SystemExit) as done:
        ask.main(["--help"])
    assert done.value.code == 0
    line = next(
        x for x in capsys.readouterr().out.splitlines() if x.lstrip().startswith("--policy POLICY")
    )
    assert f"{first_chunk} ({FirstChunk.description})" in line
    assert "vanilla (full resolution)" in line


def test_a_registered_policy_is_in_the_evaluators_grid(first_chunk, tmp_path):
    specs = eval_config.parse_policies(f"vanilla,{first_chunk}")
    assert [s.name for s in specs] == ["vanilla", first_chunk]
    with pytest.raises(PolicyError, match="allocator path") as err:
        eval_config.parse_policies(f"{first_chunk}:/some/allocator")
    assert "\n" not in str(err.value)
    assert first_chunk in cli.help_of(EvalConfig.__dataclass_fields__["policies"])
    argv = ["--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "out")]
    args = cli.parse(argv + ["--policies", f"vanilla,{first_chunk}", "--budgets", "0.2,0.5"],
                     EvalConfig, prog="eval", description="")  # fmt: skip
    config = cli.make(EvalConfig, args)
    assert [(s.name, b.retention) for s, b in config.settings()] == [
        ("vanilla", None), (first_chunk, 0.2), (first_chunk, 0.5)
    ]  # fmt: skip


def test_a_registered_policy_is_offered_by_the_app(first_chunk):
    assert first_chunk in ui.offered_policies()
    pipeline = Pipeline(Backbone.load(BACKBONE))
    labels = dict((value, label) for label, value in ui.policy_choices(pipeline))
    assert labels[first_chunk] == f"{first_chunk} ({FirstChunk.description})"
    assert ui.Form(QUESTION, policy=first_chunk).request().policy == first_chunk


def test_a_registered_policy_runs_end_to_end(first_chunk, video, capsys):
    code = ask.main([video, QUESTION, "--policy", first_chunk, "--budget", "0.5", "--json",
                     "--backbone", BACKBONE, "--frames", "8", "--max-new-tokens", "2"])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["policy"] == first_chunk
    tokens = [c["visual_tokens"] for c in result["chunks"]]
    assert len(tokens) == 4 and tokens[0] == max(tokens) and tokens[0] > tokens[-1]
    assert result["visual_tokens"] <= 0.5 * result["vanilla_visual_tokens"]
    assert result["probe_visual_tokens"] == 0


def test_unregistered_is_gone(first_chunk):
    unregister_policy(first_chunk)
    try:
        assert first_chunk not in policy_names() and first_chunk not in ui.offered_policies()
        with pytest.raises(PolicyError, match="unknown policy"):
            Request(QUESTION, policy=first_chunk)
    finally:
        register_policy(FirstChunk)  # the fixture unregisters it


def _one_sentence(err: pytest.ExceptionInfo, *words: str) -> None:
    text = str(err.value)
    assert "\n" not in text and all(w in text for w in words), text


def test_duplicate_and_malformed_policies_are_refused():
    again = type("Again", (Vanilla,), {})
    with pytest.raises(PolicyError) as err:
        register_policy(again)
    _one_sentence(err, "'vanilla'", "already registered")
    bad = type("Bad", (FirstChunk,), {"name": "first+chunk"})
    with pytest.raises(PolicyError) as err:
        register_policy(bad)
    _one_sentence(err, "'first+chunk'")
    mute = type("Mute", (FirstChunk,), {"name": "mute", "description": ""})
    with pytest.raises(PolicyError) as err:
        register_policy(mute)
    _one_sentence(err, "'mute'", "description")
    with pytest.raises(PolicyError) as err:
        register_policy(dict)
    _one_sentence(err, "Policy")
    assert policy_names() == BUILT_IN


def test_unknown_names_are_refused_with_one_sentence(video, capsys):
    for refuse in (
        lambda: policy_class("oracle"),
        lambda: make_policy("oracle"),
        lambda: Request(QUESTION, policy="oracle"),
        lambda: ui.Form(QUESTION, policy="oracle").request(),
        lambda: ui.Form(QUESTION, policy="random").request(),  # not offered by the app
        lambda: eval_config.parse_policies("vanilla,oracle"),
        lambda: unregister_policy("oracle"),
    ):
        with pytest.raises(PolicyError) as err:
            refuse()
        _one_sentence(err, "unknown policy", "choose")
    code = ask.main([video, QUESTION, "--policy", "oracle", "--backbone", BACKBONE])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "oracle" in err[-1]
