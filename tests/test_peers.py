"""The peer families in our harness: frame selection (``keyframes``) and post-encoder token pruning
(``prune``) on both tiny families: tokens that reach the language model, vanilla's logits at budget
1.0, original positions of kept tokens, decoding positions, the tower's scores and bad input."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from resadapt import ask, prune, ui
from resadapt import eval as evaluator
from resadapt.backbone import Backbone
from resadapt.config import Request
from resadapt.errors import BudgetError
from resadapt.geometry import keep_top_chunks
from resadapt.pipeline import Pipeline
from resadapt.policies import POLICY_NAMES, make_policy
from resadapt.world import TINY_BACKBONES
from tests.allocators import write_tiny_allocator
from tests.templates import with_real_template
from tests.test_backbone import QUESTION, chunked, clip

PEERS = ("keyframes", "prune")


@pytest.fixture(scope="module")
def pipeline(backbone, tmp_path_factory):
    from resadapt.pipeline import load_allocator

    path = write_tiny_allocator(tmp_path_factory.mktemp("alloc") / "a", backbone)
    return Pipeline(backbone, load_allocator(str(path), backbone))


class FirstCall:
    """Records the keyword arguments of a module's calls (a forward pre-hook)."""

    def __init__(self, module):
        self.calls: list[dict] = []
        self.handle = module.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.calls.append(dict(kwargs))

    def close(self):
        self.handle.remove()


def lm_video_tokens(pipeline: Pipeline, path: str, request: Request) -> tuple[int, dict]:
    """Visual tokens in the input ids of the answer's prefill (the last forward over more than one
    token: a probe pass comes before it), and the result."""
    model = pipeline.backbone.model
    spy = FirstCall(model)
    try:
        result = pipeline.ask(path, request).to_json()
    finally:
        spy.close()
    ids = [c["input_ids"] for c in spy.calls if c["input_ids"].shape[1] > 1][-1]
    return int((ids == model.config.video_token_id).sum()), result


# ------------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("budget", [0.3, 0.6])
def test_tokens_reaching_the_language_model_meet_the_budget_for_every_method(
    pipeline, video, budget
):
    for name in POLICY_NAMES:
        request = Request(QUESTION, policy=name, budget=budget, num_frames=12, max_new_tokens=2)
        seen, result = lm_video_tokens(pipeline, video, request)
        cap = int(np.floor(budget * result["vanilla_visual_tokens"] + 1e-9))
        assert seen == result["visual_tokens"], name
        assert sum(c["visual_tokens"] for c in result["chunks"]) == seen, name
        if name == "vanilla":
            assert seen == result["vanilla_visual_tokens"]
            continue
        assert seen <= cap, (name, seen, cap)
        if name == "prune":
            assert seen == cap  # exactly the budget
            assert result["encoded_visual_tokens"] == result["vanilla_visual_tokens"]
            assert result["timings"]["tower_s"] > 0
            assert any("vision tower encoded all" in n for n in result["notes"])
        elif name == "keyframes":
            kept = [c for c in result["chunks"] if not c["dropped"]]
            assert kept and all(c["scale"] == 1.0 for c in kept)
            dropped = [c for c in result["chunks"] if c["dropped"]]
            assert dropped and all(c["visual_tokens"] == 0 for c in dropped)
            assert result["encoded_visual_tokens"] == seen
            full = kept[0]["visual_tokens"]
            assert cap - seen < full  # as many full chunks as the budget holds


def test_keyframes_keeps_the_highest_ranked_chunks(backbone):
    g = backbone.geometry
    h, w = g.base_size(168, 224)
    full = g.tokens(h, w)
    ranks = np.array([0.2, 1.0, 0.5, 0.9, 0.1])
    np.testing.assert_array_equal(keep_top_chunks(ranks, g, h, w, 2 * full + 1), [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(keep_top_chunks(ranks, g, h, w, None), np.ones(5))
    with pytest.raises(BudgetError, match="cannot hold one"):
        keep_top_chunks(ranks, g, h, w, full - 1)


# ------------------------------------------------------------------------------- budget 1.0
@pytest.mark.parametrize("template", ["tiny", "real"])
@pytest.mark.parametrize("name", PEERS)
def test_budget_one_gives_vanillas_logits(video, name, template):
    """Both families, with the tiny world's template and a real-shaped one (video first)."""
    for family in TINY_BACKBONES:
        backbone = Backbone.load(family)
        if template == "real":
            with_real_template(backbone)
        _assert_vanilla_logits(backbone, video, name)


def _assert_vanilla_logits(backbone, video, name):
    pipeline = Pipeline(backbone)
    request = Request(QUESTION, policy=name, budget=1.0, num_frames=12)
    sampled = pipeline.decode(video, request)
    logits = []
    for policy in ("vanilla", name):
        allocation = pipeline.allocate(sampled, Request(QUESTION, policy=policy, budget=1.0))
        inputs = backbone.prepare([pipeline.chunked(sampled, allocation)], [QUESTION])
        inputs = pipeline.encode(inputs, [allocation])
        with torch.no_grad():
            logits.append(backbone.model(**inputs).logits[0, -1])
    torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------- positions
def pruned_pair(backbone, keep_share: float, contextual: float = 0.2):
    frames, timestamps, _ = clip(backbone, num_frames=8, size=(112, 168))
    inputs = backbone.prepare([chunked(frames, timestamps)], [QUESTION])
    n = int((inputs["input_ids"] == backbone.model.config.video_token_id).sum())
    keep = max(1, int(keep_share * n))
    pruned = prune.prune(backbone.model, inputs, [4], [keep], contextual)
    return inputs, pruned, keep


def test_kept_tokens_keep_their_original_positions(backbone):
    inputs, pruned, keep = pruned_pair(backbone, 0.3)
    original = prune.rope_positions(backbone.model, inputs)  # (4, 1, L)
    new = pruned.inputs["position_ids"]  # (4, 1, L')
    source = pruned.source[0]
    assert (
        new.shape[-1]
        == len(source)
        == inputs["input_ids"].shape[1]
        - (int((inputs["input_ids"] == backbone.model.config.video_token_id).sum()) - keep)
    )
    torch.testing.assert_close(new[1:, 0], original[1:, 0, source])
    assert torch.equal(new[0, 0], torch.arange(len(source)))
    assert torch.equal(pruned.inputs["input_ids"][0], inputs["input_ids"][0, source])
    assert sum(pruned.kept_per_chunk[0]) == keep
    video = pruned.inputs["input_ids"] == backbone.model.config.video_token_id
    assert int(video.sum()) == keep
    encoder = pruned.inputs["mm_encoder_outputs"]["video"]
    assert encoder.pooler_output[0].shape[0] == keep
    if backbone.family == "qwen3_vl":  # deepstack features filtered alike
        assert encoder.deepstack_features
        assert all(layer[0].shape[0] == keep for layer in encoder.deepstack_features)


def test_decoding_positions_match_the_unpruned_run(backbone):
    inputs, pruned, _ = pruned_pair(backbone, 0.3)
    config = backbone.generation_config(3)
    config.min_new_tokens = 3
    seen = []
    for run in (inputs, pruned.inputs):
        spy = FirstCall(backbone.model.model.language_model)
        try:
            with torch.no_grad():
                backbone.model.generate(**run, generation_config=config)
        finally:
            spy.close()
        seen.append([c["position_ids"][1:, :, -1] for c in spy.calls])  # (3, 1) per step
    assert len(seen[0]) == len(seen[1]) == 3
    for full, cut in zip(seen[0], seen[1], strict=True):
        assert torch.equal(full, cut)


def test_tower_scores_follow_the_language_models_token_order(backbone):
    """The scores mapped back from the tower's block order equal a recomputation in the language
    model's order (Qwen2.5-VL's window order is a real permutation at this size)."""
    frames, timestamps, _ = clip(backbone, num_frames=4, size=(112, 168))
    inputs = backbone.prepare([chunked(frames, timestamps)], [QUESTION])
    visual = backbone.model.model.visual
    attn = visual.blocks[prune.score_block(visual)].attn
    captured = {}

    def grab(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]
        captured["kwargs"] = kwargs

    handle = attn.register_forward_pre_hook(grab, with_kwargs=True)
    tower = prune.encode(backbone.model, inputs["pixel_values_videos"], inputs["video_grid_thw"])
    handle.remove()
    hidden, kwargs = captured["hidden"], captured["kwargs"]
    unit = visual.spatial_merge_size**2
    order = torch.arange(hidden.shape[0] // unit)
    if hasattr(visual, "window_size"):
        from transformers.vision_utils import get_vision_window_index

        window, _ = get_vision_window_index(
            inputs["video_grid_thw"], visual.spatial_merge_size, visual.window_size,
            visual.patch_size,
        )  # fmt: skip
        assert not torch.equal(window, torch.arange(len(window))), "no permutation to undo"
        order = torch.argsort(window)
    # patches in the language model's order, merge unit by merge unit
    lm = hidden.view(-1, unit, hidden.shape[-1])[order].reshape(hidden.shape)
    cos, sin = (
        t.view(-1, unit, t.shape[-1])[order].reshape(t.shape) for t in kwargs["position_embeddings"]
    )
    n = lm.shape[0]
    q, k, _ = attn.qkv(lm).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3)
    import sys

    q, k = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision(q, k, cos, sin)
    q, k = q.transpose(0, 1), k.transpose(0, 1)  # (H, n, d)
    sizes = (inputs["video_grid_thw"].prod(-1)).tolist()
    expected, start = [], 0
    for size in sizes:  # one frame group per item: attention within the item
        w = (
            q[:, start : start + size] @ k[:, start : start + size].transpose(-1, -2)
        ) * attn.scaling
        received = w.softmax(-1).mean(dim=(0, 1))  # (size,)
        expected.append(received.view(-1, unit).mean(-1))
        start += size
    torch.testing.assert_close(
        torch.cat(tower.scores), torch.cat(expected).detach(), atol=1e-6, rtol=1e-4
    )


def test_contextual_tokens_merge_the_rest(backbone):
    scores = torch.tensor([0.9, 0.1, 0.2, 0.8, 0.3, 0.05, 0.4, 0.7])
    features = torch.randn(8, 4)
    kept, groups = prune.select(scores, features, keep=4, contextual_share=0.5)
    assert len(kept) == 4 and {0, 3} <= set(kept.tolist())  # two dominant: the top scores
    assert (groups >= 0).all()  # every token lands in a kept slot
    merged = prune.gather(features, groups, len(kept))
    for slot in range(len(kept)):
        members = groups == slot
        torch.testing.assert_close(merged[slot], features[members].mean(0))
    kept, groups = prune.select(scores, features, keep=8, contextual_share=0.05)
    assert torch.equal(kept, torch.arange(8))


# ------------------------------------------------------------------------------- bad input
def test_bad_budgets_and_a_one_chunk_video_give_one_sentence(backbone, video, capsys):
    pipeline = Pipeline(backbone)
    sampled = pipeline.decode(video, Request(QUESTION, num_frames=12))
    with pytest.raises(BudgetError, match="keyframes keeps whole chunks") as err:
        pipeline.allocate(sampled, Request(QUESTION, policy="keyframes", max_visual_tokens=3))
    assert "\n" not in str(err.value)
    with pytest.raises(BudgetError, match="contextual share"):
        Request(QUESTION, policy="prune", contextual_share=1.0)
    one = pipeline.decode(video, Request(QUESTION, num_frames=2))
    assert len(one.frames) == 2
    with pytest.raises(BudgetError, match="cannot hold one"):
        pipeline.allocate(one, Request(QUESTION, policy="keyframes", budget=0.5))
    allocation = pipeline.allocate(one, Request(QUESTION, policy="prune", budget=0.5))
    assert allocation.pruned_to == allocation.vanilla_tokens // 2
    code = ask.main([video, QUESTION, "--policy", "keyframes", "--max-visual-tokens", "3",
                     "--backbone", backbone.name, "--frames", "12"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: keyframes keeps whole chunks")


# ------------------------------------------------------------------------------- everywhere
def test_peers_are_named_in_the_cli_app_and_evaluator(backbone, video, tmp_path, capsys):
    assert set(PEERS) <= set(POLICY_NAMES) and set(PEERS) <= set(ui.offered_policies())
    labels = dict((value, label) for label, value in ui.policy_choices(Pipeline(backbone)))
    assert "frame selection" in labels["keyframes"] and "keep" in labels["prune"]
    assert make_policy("prune", contextual_share=0.1).contextual_share == 0.1
    code = ask.main([video, QUESTION, "--policy", "prune", "--budget", "0.4", "--json",
                     "--backbone", backbone.name, "--frames", "8"])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["policy"] == "prune"
    assert result["encoded_visual_tokens"] == result["vanilla_visual_tokens"]
    data = tmp_path / "data.jsonl"
    data.write_text(
        json.dumps({"video": video, "question": QUESTION, "answer": "A",
                    "options": ["up", "down"], "problem_type": "multiple_choice"}) + "\n"
    )  # fmt: skip
    out = tmp_path / "out"
    code = evaluator.main(["--data", str(data), "--policies", "vanilla,keyframes,prune",
                           "--budgets", "0.4", "--frames", "8", "--out", str(out),
                           "--backbone", backbone.name])  # fmt: skip
    assert code == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["policy"] for r in rows] == ["vanilla", "keyframes", "prune"]
    assert all(r["examples"] == 1 and r["mean_e2e_s"] >= r["mean_latency_s"] for r in rows)
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    pruned = next(r for r in records if r["policy"] == "prune")
    assert pruned["encoded_visual_tokens"] == pruned["vanilla_visual_tokens"]
    assert pruned["visual_tokens"] == int(0.4 * pruned["vanilla_visual_tokens"])
    assert pruned["tower_s"] > 0
    kept = next(r for r in records if r["policy"] == "keyframes")
    assert 0 in kept["chunk_tokens"] and kept["encoded_visual_tokens"] == kept["visual_tokens"]


def test_kept_chunks_keep_their_true_times(backbone, video):
    """keyframes: a kept chunk's tokens have the positions (Qwen2.5-VL) or the timestamp text
    (Qwen3-VL) they have in the vanilla run, whatever was dropped before it."""
    pipeline = Pipeline(backbone)
    sampled = pipeline.decode(video, Request(QUESTION, num_frames=12))
    vanilla = pipeline.allocate(sampled, Request(QUESTION, policy="vanilla"))
    full = vanilla.tokens[0]
    scales = np.array([0.1, 0.2, 1.0, 0.3, 0.9, 0.1])  # ranks: chunks 2 and 4 are kept
    g = backbone.geometry
    kept = keep_top_chunks(scales, g, *sampled.base_size, 2 * full)
    np.testing.assert_array_equal(kept, [0, 0, 1, 0, 1, 0])
    allocation = dataclasses.replace(
        vanilla,
        scales=kept,
        sizes=[s if k else (0, 0) for s, k in zip(vanilla.sizes, kept, strict=True)],
        tokens=[t if k else 0 for t, k in zip(vanilla.tokens, kept, strict=True)],
    )
    runs = [
        backbone.prepare([pipeline.chunked(sampled, a)], [QUESTION]) for a in (vanilla, allocation)
    ]
    video_id = backbone.model.config.video_token_id
    if backbone.family == "qwen2_5_vl":
        at = [torch.nonzero(r["input_ids"][0] == video_id).flatten() for r in runs]
        chunk_tokens = [at[0][k * full : (k + 1) * full] for k in (2, 4)]
        torch.testing.assert_close(
            runs[1]["position_ids"][1:, 0, at[1]],
            runs[0]["position_ids"][1:, 0, torch.cat(chunk_tokens)],
        )
    else:
        times = [
            re.findall(r"<[\d.]+ seconds>", backbone.tokenizer.decode(r["input_ids"][0]))
            for r in runs
        ]
        assert len(times[0]) == 6 and len(set(times[0])) == 6
        assert times[1] == [times[0][2], times[0][4]]
