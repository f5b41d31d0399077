"""The lmms-eval model: lmms-eval's own Instance requests on a generated video, tiny backbone (CPU).

lmms-eval is installed by .ci/run without its dependencies (its av<16 pin would downgrade PyAV);
its model API, request objects and registry need only loguru besides what we install.
"""

from __future__ import annotations

import importlib.metadata
import math

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (see .ci/run)")

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.models.registry_v2 import ModelRegistryV2  # noqa: E402

from resadapt.errors import BudgetError  # noqa: E402
from resadapt.lmms import MODEL_ID, ResAdaptLMM, manifest  # noqa: E402
from tests.media import write_video  # noqa: E402

TASK, SPLIT = "videomme", "test"
MODEL_ARGS = "backbone=tiny-random-qwen2.5-vl,policy=uniform,budget=0.5,frames=4,max_new_tokens=2"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    video = write_video(root / "clip.mp4", num_frames=12, fps=4, height=112, width=112)
    model = ResAdaptLMM.create_from_arg_string(MODEL_ARGS, {"batch_size": 2, "device": "cpu"})
    model.task_dict = {
        TASK: {SPLIT: {0: {"path": str(video)}, 1: {"path": str(root / "missing.mp4")}}}
    }
    return model


def doc_to_visual(doc):
    return [doc["path"]]


def instance(kind: str, arguments: tuple, doc_id: int = 0) -> Instance:
    metadata = {"task": TASK, "doc_id": doc_id, "repeats": 1}
    return Instance(request_type=kind, arguments=arguments, idx=0, metadata=metadata)


def test_generate_until_decodes_the_file_itself_with_true_fps(model, monkeypatch):
    seen = []
    prepare = model.pipeline.backbone.prepare

    def spy(videos, questions, answers=None):
        seen.extend(videos)
        return prepare(videos, questions, answers)

    monkeypatch.setattr(model.pipeline.backbone, "prepare", spy)
    kwargs = {"max_new_tokens": 3, "until": ["\n\n"]}
    requests = [
        instance("generate_until", ("What happens?", kwargs, doc_to_visual, d, TASK, SPLIT), d)
        for d in (0, 1, 0)
    ]
    answers = model.generate_until(requests)
    assert len(answers) == 3 and answers[1] == "" and answers[0] == answers[2]
    assert all(isinstance(a, str) for a in answers)
    (video, _) = seen  # the missing video is refused before the backbone; both others batched
    # frames 0, 4, 7, 11 of a 4 fps file: the true rate, not a linspace over a pre-sampled clip
    assert video.sample_fps == pytest.approx(3 / 2.75)
    assert [c.shape[0] for c in video.chunks] == [2, 2]


def test_loglikelihood_is_the_continuations_log_probability(model):
    requests = [
        instance("loglikelihood", ("Which?", cont, doc_to_visual, 0, TASK, SPLIT))
        for cont in ("A", "B", "A B")
    ] + [instance("loglikelihood", ("Which?", "A", doc_to_visual, 1, TASK, SPLIT), 1)]
    (lp_a, greedy_a), (lp_b, greedy_b), (lp_ab, _), missing = model.loglikelihood(requests)
    assert all(isinstance(g, bool) for g in (greedy_a, greedy_b)) and not (greedy_a and greedy_b)
    assert math.exp(lp_a) + math.exp(lp_b) <= 1 + 1e-6  # two of the vocabulary's outcomes
    assert lp_ab < lp_a <= 0  # "A B" is "A" then more tokens
    # answer_logprob scores the same tokens plus the end-of-turn token: lower by log p(end)
    pipeline = model.pipeline
    request = model._request("Which?")
    video = pipeline.decode(model.task_dict[TASK][SPLIT][0]["path"], request)
    chunked = pipeline.chunked(video, pipeline.allocate(video, request))
    with_end = float(pipeline.backbone.answer_logprob([chunked], [request.question], ["A"])[0])
    assert with_end < lp_a
    assert missing == (-math.inf, False)


def test_generate_until_multi_round_asks_once_per_round(model):
    contexts = []

    def doc_to_text(doc, previous_output, round_idx, previous_round_info):
        contexts.append(round_idx)
        done = round_idx == 2
        return None, f"Round {round_idx}: and then?", done, previous_output, previous_round_info

    args = ("First?", {"max_new_tokens": 2}, doc_to_visual, doc_to_text, 0, TASK, SPLIT)
    (rounds,) = model.generate_until_multi_round([instance("generate_until_multi_round", args)])
    assert len(rounds) == 2 and contexts == [1, 2]


def test_model_args_are_our_flags_and_bad_values_are_one_sentence():
    with pytest.raises(BudgetError, match=r"\(0, 1\], got 2"):
        ResAdaptLMM.create_from_arg_string("backbone=tiny-random-qwen2.5-vl,budget=2")


def test_registered_through_the_entry_point():
    registry = ModelRegistryV2()
    try:
        points = importlib.metadata.entry_points(group="lmms_eval.models")
    except Exception:  # noqa: BLE001 - metadata of unrelated distributions
        points = []
    if any(p.name == MODEL_ID for p in points):  # the project is installed (pip install -e .)
        registry.load_entrypoint_manifests()
    else:
        registry.register_manifest(manifest())
    assert registry.get_model_class(MODEL_ID) is ResAdaptLMM


def test_the_attention_policy_at_a_budget(model):
    args = "backbone=tiny-random-qwen2.5-vl,policy=attention,budget=0.15,frames=4,max_new_tokens=2"
    attention = ResAdaptLMM.create_from_arg_string(args, {"device": "cpu"})
    attention.task_dict = model.task_dict
    request = instance("generate_until", ("What?", {}, doc_to_visual, 0, TASK, SPLIT))
    (answer,) = attention.generate_until([request])
    assert isinstance(answer, str) and attention.settings["policy"] == "attention"


def test_the_prune_policy_prunes_what_reaches_the_language_model(model):
    """policy=prune: the budget's number of visual tokens reaches the language model, in
    generate_until and in loglikelihood alike (the tower encodes every chunk at full size)."""
    args = "backbone=tiny-random-qwen2.5-vl,policy=prune,budget=0.25,frames=4,max_new_tokens=2"
    pruning = ResAdaptLMM.create_from_arg_string(args, {"device": "cpu"})
    pruning.task_dict = model.task_dict
    backbone = pruning.pipeline.backbone
    video_id = backbone.model.config.video_token_id
    request = pruning._request("What?")
    video = pruning.pipeline.decode(model.task_dict[TASK][SPLIT][0]["path"], request)
    cap = math.floor(0.25 * pruning.pipeline.vanilla_tokens(video))
    seen = []
    generate, forward = backbone.generate, backbone.model.forward

    def spy_generate(inputs, *a, **k):
        seen.append(int((inputs["input_ids"] == video_id).sum()))
        return generate(inputs, *a, **k)

    def spy_forward(*a, **k):
        seen.append(int((k["input_ids"] == video_id).sum()))
        return forward(*a, **k)

    backbone.generate = spy_generate
    (answer,) = pruning.generate_until(
        [instance("generate_until", ("What?", {}, doc_to_visual, 0, TASK, SPLIT))]
    )
    backbone.model.forward = spy_forward
    ((logprob, _),) = pruning.loglikelihood(
        [instance("loglikelihood", ("What?", "A", doc_to_visual, 0, TASK, SPLIT))]
    )
    assert isinstance(answer, str) and logprob <= 0
    assert seen == [cap, cap] and cap < pruning.pipeline.vanilla_tokens(video)


def test_model_args_take_scorer_operator_combinations():
    """``policy=learned+select+prune,encode_budget=0.5`` parses like any policy (one registry)."""
    from resadapt import cli, lmms
    from resadapt.config import ModelConfig, Request

    argv = lmms._argv({"policy": "learned+select+prune", "encode_budget": 0.5})
    args = cli.parse(
        argv, ModelConfig, Request, exclude=("question",), prog="lmms", description="lmms"
    )
    assert args.policy == "learned+select+prune" and args.encode_budget == 0.5
