"""Scorers × operators: ``scorer+operator`` names resolve in the one registry (the peers are
aliases), refused combinations give one sentence, select keeps chunks at full or their own sizes,
``+prune`` spends the encode budget in the tower and keeps the budget for the language model, and
every combination runs from the CLI, the evaluator (with its operator and encode-budget axes) and
the app's form, on both tiny families."""

import json

import numpy as np
import pytest

from resadapt import ask, report, ui
from resadapt import eval as evaluator
from resadapt.config import ENCODE_BUDGET, Request
from resadapt.errors import BudgetError, PolicyError
from resadapt.eval_config import EvalConfig, parse_policies
from resadapt.pipeline import Pipeline, load_allocator
from resadapt.policies import (
    ALIASES,
    Composed,
    combination_names,
    make_policy,
    policy_choices,
    policy_class,
    policy_names,
)
from resadapt.policies.operators import SELECT_THRESHOLD, PruneAfter, SelectChunks
from tests.allocators import write_tiny_allocator
from tests.test_backbone import QUESTION
from tests.test_peers import lm_video_tokens

COMBINATIONS = ("learned+select", "learned+prune", "learned+select+prune", "uniform+prune")


@pytest.fixture(scope="module")
def pipeline(backbone, tmp_path_factory):
    path = write_tiny_allocator(tmp_path_factory.mktemp("alloc") / "a", backbone)
    return Pipeline(backbone, load_allocator(str(path), backbone))


def test_combinations_resolve_in_the_registry_and_the_peers_are_aliases():
    names = combination_names()
    assert set(COMBINATIONS) <= set(names) and "attention+select+prune" in names
    assert not {"vanilla+select", "uniform+select"} & set(names)  # nothing to rank
    assert policy_choices()[: len(policy_names())] == policy_names()  # registered names first
    assert policy_class("attention+select") is policy_class("keyframes")
    assert policy_class("vanilla+prune") is policy_class("prune")
    assert ALIASES == {"attention+select": "keyframes", "vanilla+prune": "prune"}
    learned = policy_class("learned+select+prune")
    assert issubclass(learned, Composed) and learned.needs_allocator and learned.capped
    assert isinstance(learned.operator, PruneAfter) and learned.operator.spends_encode_cap
    assert policy_class("attention+prune").runs_probe
    assert policy_class("learned+prune") is policy_class("learned+prune")  # one class per name
    assert "allocator" in learned.description and "pruned" in learned.description
    assert make_policy("uniform+prune", scale=0.3).scorer.scale == 0.3


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("keyframes+prune", "already has its own operator"),
        ("learned+resize", "unknown operators"),
        ("learned+prune+select", "unknown operators"),
        ("vanilla+select", "composes with prune only"),
        ("nope+prune", "unknown policy 'nope'"),
    ],
)
def test_refused_combinations_give_one_sentence(name, words, video, capsys):
    with pytest.raises(PolicyError, match=words) as err:
        policy_class(name)
    assert "\n" not in str(err.value)
    with pytest.raises(PolicyError, match=words):
        parse_policies(f"vanilla,{name}")
    args = [video, QUESTION, "--policy", name, "--backbone", "tiny-random-qwen2.5-vl"]
    assert ask.main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")


def test_select_keeps_full_or_own_sizes_within_the_cap(backbone):
    g = backbone.geometry
    h, w = g.base_size(168, 224)
    full = g.tokens(h, w)
    scores = np.array([0.2, 1.0, 0.45, 0.9, 0.6])
    scales, pruned = SelectChunks("full").fit(scores, g, h, w, 2 * full + 1, "p")
    np.testing.assert_array_equal(scales, [0, 1, 0, 1, 0]) and pruned is None
    own, _ = SelectChunks("own").fit(scores, g, h, w, full, "p")  # below two full chunks
    kept = scores >= SELECT_THRESHOLD * scores.max()
    np.testing.assert_array_equal(own > 0, kept)  # 1.0, 0.9 and 0.6 kept; 0.45 and 0.2 dropped
    tokens = [g.tokens(*g.scaled_size(h, w, s)) for s in own if s > 0]
    assert sum(tokens) <= full and own[1] >= own[3] >= own[4]  # fitted, the order kept
    with pytest.raises(BudgetError, match="cannot hold one"):
        SelectChunks("full").fit(scores, g, h, w, full - 1, "learned+select")


def test_prune_after_spends_the_encode_cap_and_keeps_the_cap(backbone):
    g = backbone.geometry
    h, w = g.base_size(168, 224)
    full = g.tokens(h, w)
    scores = np.array([0.2, 1.0, 0.3, 0.9])
    op = PruneAfter(SelectChunks("full"))
    scales, pruned = op.fit(scores, g, h, w, full // 2, "p", encode_cap=2 * full)
    np.testing.assert_array_equal(scales, [0, 1, 0, 1])  # the tower spends the encode cap
    assert pruned == full // 2  # the language model gets the cap
    scales, pruned = op.fit(scores, g, h, w, 3 * full, "p", encode_cap=full)
    assert (scales > 0).sum() == 3 and pruned == 3 * full  # never below the cap


@pytest.mark.parametrize("name", COMBINATIONS)
def test_every_combination_meets_the_budget_end_to_end(pipeline, video, name):
    budget, encode = 0.2, 0.5
    request = Request(QUESTION, policy=name, budget=budget, encode_budget=encode,
                      num_frames=12, max_new_tokens=2)  # fmt: skip
    seen, result = lm_video_tokens(pipeline, video, request)
    vanilla = result["vanilla_visual_tokens"]
    assert result["policy"] == name and seen == result["visual_tokens"] <= int(budget * vanilla)
    assert sum(c["visual_tokens"] for c in result["chunks"]) == seen
    if "prune" in name:
        assert result["encoded_visual_tokens"] <= int(encode * vanilla)
        assert result["encoded_visual_tokens"] > seen and result["timings"]["tower_s"] > 0
        assert any("vision tower encoded" in n for n in result["notes"])
    if "select" in name:
        assert any(c["dropped"] and c["visual_tokens"] == 0 for c in result["chunks"])
    default = Request(QUESTION, policy=name, budget=budget, num_frames=12)
    allocation = pipeline.allocate(pipeline.decode(video, default), default)
    if "prune" in name:  # the documented default encode budget
        assert allocation.encoded_tokens <= max(int(ENCODE_BUDGET * vanilla), int(0.2 * vanilla))


def test_the_evaluator_grid_takes_operator_and_encode_budget_axes(pipeline, video, tmp_path):
    specs = parse_policies("vanilla,learned,prune")
    config = EvalConfig(out="o", data="d", policies=specs, operators=("resize", "select+prune"),
                        encode_budgets=(0.4, 0.6))  # fmt: skip
    labels = [s.label for s in config.policies]
    assert labels == ["vanilla", "learned", "learned+select+prune@0.4",
                      "learned+select+prune@0.6", "prune"]  # fmt: skip
    with pytest.raises(BudgetError, match="encode-budgets"):
        EvalConfig(out="o", data="d", encode_budgets=(1.5,))
    data = tmp_path / "data.jsonl"
    data.write_text(
        json.dumps(
            {
                "video": video,
                "question": QUESTION,
                "answer": "A",
                "options": ["up", "down"],
                "problem_type": "multiple_choice",
            }
        )
    )
    out = tmp_path / "out"
    alloc = pipeline.learned.path
    code = evaluator.main(["--data", str(data), "--policies", f"prune,learned:{alloc}",
                           "--operators", "resize,prune", "--encode-budgets", "0.5",
                           "--budgets", "0.2", "--frames", "8", "--out", str(out),
                           "--backbone", pipeline.backbone.name])  # fmt: skip
    assert code == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["policy"] for r in rows] == ["prune", "learned", "learned+prune@0.5"]
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    composed = next(r for r in records if r["policy"] == "learned+prune@0.5")
    vanilla = composed["vanilla_visual_tokens"]
    assert composed["visual_tokens"] <= int(0.2 * vanilla) < composed["encoded_visual_tokens"]
    assert composed["encoded_visual_tokens"] <= int(0.5 * vanilla) and composed["tower_s"] > 0
    assert (out / "frontier_best.png").stat().st_size > 0  # learned has two members


def test_the_best_of_each_family_is_drawn():
    def row(policy, budget, accuracy):
        return {"policy": policy, "budget": budget, "max_visual_tokens": None, "frames": 16,
                "examples": 4, "accuracy": accuracy}  # fmt: skip

    rows = [row("vanilla", None, 1.0), row("prune", 0.1, 0.9), row("learned", 0.1, 0.3),
            row("learned+prune@0.25", 0.1, 0.95), row("learned", 0.2, 0.9),
            row("learned+select:a", 0.2, 0.8), row("keyframes", 0.2, 0.5)]  # fmt: skip
    best = {(r["policy"], r["budget"]): r["best_of"] for r in report.best_of_families(rows)}
    assert best == {("vanilla", None): "vanilla", ("prune", 0.1): "prune",
                    ("learned", 0.1): "learned+prune@0.25", ("learned", 0.2): "learned",
                    ("attention", 0.2): "keyframes"}  # fmt: skip


def test_the_app_form_composes_the_operator_beside_the_policy(pipeline):
    form = ui.Form(QUESTION, "learned", 0.2, operator="select+prune", encode_budget=0.5)
    request = form.request()
    assert request.policy == "learned+select+prune" and request.encode_budget == 0.5
    assert ui.Form(QUESTION, "learned", 0.2, operator="resize").request().policy == "learned"
    with pytest.raises(PolicyError, match="composes with prune only"):
        ui.Form(QUESTION, "vanilla", 0.2, operator="select").request()
    assert "select+prune" in ui.OPERATOR_CHOICES
