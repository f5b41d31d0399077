"""The tiny-backbone recipe: every phase runs, the checkpoint loads, a resumed run matches."""

import json

import numpy as np
import pytest
import torch

from resadapt.backbone import Backbone
from resadapt.config import Request
from resadapt.pipeline import Pipeline
from resadapt.world import losses, recipe
from resadapt.world.clips import make_clip
from resadapt.world.synth import write_dataset

SMALL = [
    "--hidden", "32", "--text-layers", "1", "--vision-depth", "1", "--heads", "2",
    "--vision-schedule", "56x1:2,168x2:1", "--schedule", "2x2:2",
    "--batch-size", "2", "--vision-batch-size", "2", "--eval-size", "2", "--eval-every", "5",
    "--threads", "1", "--tie-colour", "--bind-layer", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bb")
    out, work = root / "final", root / "work"
    argv = [*SMALL, "--out-dir", str(out), "--work-dir", str(work), "--checkpoint-every", "3"]
    assert recipe.main(argv) == 0
    return root, out, work, argv


def test_every_phase_runs_and_metrics_are_written(run):
    _, _, work, _ = run
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["vision"] * 3 + ["joint"] * 2
    assert rows[-1]["lm_loss"] > 0 and "val_full" in rows[-1] and "val_uniform_0.1" in rows[-1]


def test_checkpoint_loads_as_a_backbone_and_answers_a_video(run):
    root, out, _, _ = run
    assert json.loads((out / "train_config.json").read_text())["hidden"] == 32
    backbone = Backbone.load(str(out))
    assert backbone.geometry.factor == 28 and backbone.geometry.max_pixels == 168 * 168
    rows = write_dataset(root / "data", 1, seed=0, num_frames=6)
    video = str(root / "data" / json.loads(rows.read_text())["video"])
    result = Pipeline(backbone).ask(video, Request("Which way?", policy="uniform", num_frames=4))
    assert result.visual_tokens > 0


def test_resume_continues_to_the_same_weights(run, tmp_path):
    _, out, work, argv = run
    resumed = tmp_path / "final"
    # the run checkpointed at step 3; resuming replays steps 4-5 from that state
    args = [*SMALL, "--out-dir", str(resumed), "--work-dir", str(work), "--resume"]
    assert recipe.main(args) == 0
    a = Backbone.load(str(out)).model.state_dict()
    b = Backbone.load(str(resumed)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_schedule_is_one_error_line(capsys):
    assert recipe.main(["--schedule", "2x3:5"]) == 2
    assert capsys.readouterr().err.startswith("error: --schedule needs 1 <= cards <= chunks")


def test_clip_targets_follow_the_sampled_frames():
    cfg = recipe.BackboneTrainConfig(long_mix=1.0)
    rng = np.random.default_rng(0)
    clip = make_clip(5, cfg, 4, 3, rng, 28, 168)
    assert clip.frames.shape == (8, 168, 168, 3) and clip.scales.shape == (4,)
    # sampled from 16 source frames, every card still shows in some sampled frame (two cards can
    # share a sampled chunk)
    assert len(set(np.unique(clip.colour_ids)) - {0}) == 3
    assert all(clip.label_ids[k].any() == clip.colour_ids[k].any() for k in range(4))


def test_count_stages_continue_a_checkpoint(run, tmp_path):
    """The extension step: --init-from a finished checkpoint, no warm-up, a mixed stage; both
    tasks are evaluated at full size and at the smallest size, and the weights move."""
    _, out, _, _ = run
    final, work = tmp_path / "final", tmp_path / "work"
    argv = [
        *SMALL, "--init-from", str(out), "--vision-schedule", "",
        "--schedule", "5x1:1@count,5x2:2@mixed", "--uniform-mix", "0.5", "--presence-weight", "1",
        "--out-dir", str(final), "--work-dir", str(work),
    ]  # fmt: skip
    assert recipe.main(argv) == 0
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["task"]) for r in rows] == [("joint", "count")] + [
        ("joint", "mixed")
    ] * 2
    assert all("present_acc" in r for r in rows) and "count_probe_acc" in rows[0]
    for key in ("val_full", "val_smallest", "val_full_count", "val_smallest_count"):
        assert 0 <= rows[-1][key] <= 1, key
    before = Backbone.load(str(out)).model.state_dict()
    after = Backbone.load(str(final)).model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (
        Backbone.load(str(final)).tokenizer.get_vocab()
        == Backbone.load(str(out)).tokenizer.get_vocab()
    )


def test_attention_target_only_where_the_evidence_is_one_chunk(run):
    """Count's evidence spans several chunks: its rows get no attention-head target."""
    _, out, _, _ = run
    cfg = recipe.BackboneTrainConfig(init_from=str(out), hidden=32, text_layers=1, bind_layer=0)
    backbone, heads = recipe.build(cfg)
    rng = np.random.default_rng(0)
    factor = backbone.geometry.factor

    def clips(task):
        made = [make_clip(s, cfg, 5, 2, rng, factor, 168, task) for s in range(2)]
        for c in made:
            c.scales[:] = 1.0
        return made

    _, _, stats = losses.batch_losses(backbone, heads, clips("count"), True, bind_layer=0)
    assert "bind_attention" not in stats and "query_colour_acc" in stats
    assert "count_probe_acc" in stats and "present_acc" not in stats  # presence is off by default
    count = clips("count")
    _, aux_off, _ = losses.batch_losses(backbone, heads, count, True, bind_layer=0)
    _, aux_on, stats = losses.batch_losses(
        backbone, heads, count, True, bind_layer=0, presence_weight=1.0
    )
    assert "present_acc" in stats and aux_on > aux_off  # count's own targets
    _, _, stats = losses.batch_losses(backbone, heads, clips("main"), True, bind_layer=0)
    assert "bind_attention" in stats and "count_probe_acc" not in stats


def test_count_clips_are_never_resampled_and_mark_the_chunks_with_a_card():
    cfg = recipe.BackboneTrainConfig(long_mix=1.0)
    rng = np.random.default_rng(0)
    for seed in range(6):
        clip = make_clip(seed, cfg, 8, 3, rng, 28, 168, "count")
        assert clip.sample.task == "count" and clip.frames.shape[0] == 16
        n = int(clip.sample.answer)  # the stage's 3 cards do not apply: count draws 2-5
        assert len(set(np.unique(clip.colour_ids)) - {0}) == n
        assert [clip.colour_ids[k].any() for k in range(8)] == clip.present.tolist()
        assert clip.present.sum() == n  # one card per chunk


def test_presence_targets_follow_resampled_frames():
    """A main clip sampled from twice as many frames: a chunk shows a card when either of its
    sampled frames does."""
    cfg = recipe.BackboneTrainConfig(long_mix=1.0)
    clip = make_clip(5, cfg, 4, 3, np.random.default_rng(0), 28, 168)
    shown = {t for card in clip.sample.cards for t in card.frames}
    pairs = clip.video.indices.reshape(4, 2)
    assert clip.present.tolist() == [bool(shown & set(p.tolist())) for p in pairs]


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [("4x2:5@count", "needs at least 5 chunks"), ("8x2:5@nope", "names task 'nope'")],
)
def test_bad_task_stage_is_one_error_line(capsys, schedule, fragment):
    assert recipe.main(["--schedule", schedule]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err
