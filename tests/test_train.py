"""The CAPO trainer end to end: tiny random Qwen2.5-VL, real generated videos, real checkpoints.

One module-scoped smoke run (4 steps, with invalid rows and an unreadable video in its data) is
shared by the output, reload, resume and DDP tests; the fast tests cover the command line, the
data order and the allocator config.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import safetensors.torch
import torch

from allocator import Allocator, AllocatorConfig, mean_scale
from resadapt import compat
from resadapt.backbone import Backbone
from resadapt.checkpoint import CONFIG_FILE, FINAL, METRICS_FILE, TRAINING_STATE, find_resume
from resadapt.config import Request
from resadapt.errors import ResAdaptError
from resadapt.pipeline import Pipeline, load_allocator
from resadapt.policies import Learned, allocator_inputs
from resadapt.train import main, parse_config, train
from resadapt.train_config import TrainConfig
from resadapt.train_data import epoch_order, resolve_allocator_config, step_positions
from resadapt.world import synth
from tests.media import write_text_as_video

REPO = Path(__file__).resolve().parent.parent
BACKBONE = "tiny-random-qwen2.5-vl"
SMALL_ALLOCATOR = dict(hidden_dim=64, num_layers=1, num_heads=2, vocab_size=512, query_embed_dim=16)
VALID_ROWS = 4


def run_args(data: dict[str, Path], out_dir: Path, steps: int) -> list[str]:
    """The smoke run's command line (M = 4 allocations of 2 prompts, 8 frames per video)."""
    return [
        "--data", str(data["train"]),
        "--backbone", BACKBONE,
        "--init-allocator", str(data["init"]),
        "--out-dir", str(out_dir),
        "--steps", str(steps),
        "--num-frames", "8",
        "--prompts-per-step", "2",
        "--num-rollouts", "4",
        "--max-new-tokens", "4",
        "--warmup-steps", "0",
        "--lr", "1e-3",
        "--checkpoint-every", "2",
    ]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a few shared cores, OpenMP threads stall each other for seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """4 synthetic videos; train rows add an unreadable .mp4, an invalid row and a non-JSON line."""
    root = tmp_path_factory.mktemp("train-data")
    rows_path = synth.write_dataset(root, num=VALID_ROWS, seed=0, task="main")
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    write_text_as_video(root / "videos" / "notes.mp4")
    lines = [json.dumps(r) for r in rows]
    lines.append(json.dumps({**rows[0], "video": "videos/notes.mp4"}))  # valid row, bad file
    lines.append(json.dumps({**rows[1], "question": ""}))  # invalid row
    lines.append("{not json")  # invalid line
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    (root / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    torch.manual_seed(0)
    Allocator(AllocatorConfig(**SMALL_ALLOCATOR)).save_pretrained(root / "init")
    return {
        "root": root,
        "train": root / "train.jsonl",
        "val": root / "val.jsonl",
        "init": root / "init",
        "video": root / rows[0]["video"],
        "question": rows[0]["question"],
    }


@pytest.fixture(scope="module")
def smoke(data, tmp_path_factory):
    """A 4-step run with validation every 2 steps: (out_dir, config, trained allocator)."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    argv = run_args(data, out, steps=4)
    argv += ["--val-data", str(data["val"]), "--val-size", "2", "--val-every", "2"]
    config = parse_config(argv)
    return out, config, train(config).eval()


def metric_lines(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / METRICS_FILE).read_text().splitlines()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(folder / "model.safetensors"))


# ------------------------------------------------------------------------------------ end to end
def test_smoke_run_changes_every_parameter_and_writes_outputs(data, smoke):
    out, config, trained = smoke
    init = Allocator.from_pretrained(str(data["init"]))
    unchanged = [
        name
        for (name, before), after in zip(init.named_parameters(), trained.parameters(), strict=True)
        if torch.equal(before, after.detach().cpu())
    ]
    assert unchanged == []
    for name in ("checkpoint-2", "checkpoint-4", FINAL):
        folder = out / name
        for file in ("config.json", "model.safetensors", TRAINING_STATE, CONFIG_FILE):
            assert (folder / file).is_file(), folder / file
        assert json.loads((folder / CONFIG_FILE).read_text()) == asdict(config)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary folders
    state = torch.load(out / FINAL / TRAINING_STATE, weights_only=True)
    assert state["step"] == 4 and {"optimizer", "scheduler", "rng"} <= set(state)
    final, last = weights(out / FINAL), weights(out / "checkpoint-4")
    assert all(torch.equal(final[k], last[k]) for k in final)

    lines = metric_lines(out)
    train_lines = [r for r in lines if r["split"] == "train"]
    val_lines = [r for r in lines if r["split"] == "val"]
    assert [r["step"] for r in train_lines] == [1, 2, 3, 4]
    assert [r["step"] for r in val_lines] == [2, 4] and all(r["videos"] == 2 for r in val_lines)
    for r in train_lines:
        for key in ("reward", "accuracy", "retention", "visual_tokens", "scale_spread"):
            assert 0 <= r[key] < 1e4, (key, r)
        assert 0 < r["retention"] <= 1 and r["advantage_std"] > 0 and r["loss"] is not None
        assert r["world_size"] == 1 and r["rollouts"] == 4 * r["prompts"]


def test_invalid_rows_and_unreadable_videos_are_skipped_and_counted(smoke):
    out, _, _ = smoke
    train_lines = [r for r in metric_lines(out) if r["split"] == "train"]
    assert all(r["skipped_rows"] == 2 for r in train_lines)  # empty question + invalid JSON
    # Epoch 0 (positions 0-4 of 5 rows) visits the unreadable video once; the step goes on.
    assert train_lines[-1]["skipped_videos_total"] >= 1
    assert sum(r["prompts"] for r in train_lines) == 8 - train_lines[-1]["skipped_videos_total"]


def test_reloaded_allocator_reproduces_its_beta_outputs(data, smoke):
    out, _, trained = smoke
    backbone = Backbone.load(BACKBONE)
    pipeline = Pipeline(backbone)
    question = data["question"]
    video = pipeline.decode(str(data["video"]), Request(question=question, num_frames=8))
    ctx = pipeline.context(video, question)
    inputs = allocator_inputs([ctx], backbone.tokenizer, trained.config.max_query_tokens)
    reloaded = Allocator.from_pretrained(str(out / FINAL))
    with torch.no_grad():
        want, got = trained(**inputs), reloaded(**inputs)
    assert torch.equal(want.alpha, got.alpha) and torch.equal(want.beta, got.beta)
    scales = Learned.load(out / FINAL, backbone.tokenizer).scales(ctx)
    expected = mean_scale(want.alpha, want.beta, scale_min=0.2, scale_max=1.0)[0].numpy()
    assert (scales == expected).all()


def test_resume_from_a_checkpoint_matches_the_uninterrupted_run_bitwise(data, smoke, tmp_path):
    out, _, _ = smoke
    resumed = tmp_path / "run"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    (resumed / ".tmp-checkpoint-3").mkdir()  # an interrupted write: ignored by --resume auto
    assert main(run_args(data, resumed, steps=4) + ["--resume", "auto"]) == 0
    want, got = weights(out / FINAL), weights(resumed / FINAL)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    first = [r for r in metric_lines(out) if r["split"] == "train"][2:]
    again = metric_lines(resumed)
    assert [r["step"] for r in again] == [3, 4]
    for a, b in zip(first, again, strict=True):
        assert {**a, "seconds": 0} == {**b, "seconds": 0}


@pytest.mark.slow
def test_two_process_ddp_run_matches_one_process(data, smoke, tmp_path):
    """torchrun, gloo on CPU: processes sample their own prompts; the steps equal one process's."""
    out, _, _ = smoke
    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "resadapt.train", *run_args(data, ddp, steps=2), "--cpu"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (ddp / FINAL / "model.safetensors").is_file()
    lines = metric_lines(ddp)
    single = [r for r in metric_lines(out) if r["split"] == "train"][:2]
    assert [r["world_size"] for r in lines] == [2, 2]
    for a, b in zip(single, lines, strict=True):
        assert b["prompts"] == a["prompts"]  # both processes' prompts reached the all-reduce
        for key in ("reward", "retention", "visual_tokens", "skipped_videos"):
            assert a[key] == b[key], key
        # After the first update the weights differ in the last bits (DDP averages the gradient
        # of two processes, one process sums it in one backward), so the sampled scales' spread
        # agrees to float32 precision rather than bit for bit.
        assert b["scale_spread"] == pytest.approx(a["scale_spread"], rel=1e-6)
        for key in ("loss", "grad_norm", "advantage_std"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key


@pytest.mark.parametrize(
    "variant",
    [
        # dense reward, the reference's cost, two clipped epochs, Qwen3-VL (attention distilled)
        ["--reward", "logprob", "--cost", "scale", "--ppo-epochs", "2"]
        + ["--backbone", "tiny-random-qwen3-vl"],
        # two sampled answers per allocation, the direct-cost ablation, backbone query embeddings,
        # no attention distillation
        ["--answers-per-rollout", "2", "--advantage", "direct", "--query-encoder", "backbone"]
        + ["--attention-weight", "0"],
    ],
)
def test_reward_cost_and_update_variants_run(data, tmp_path, variant):
    out = tmp_path / "run"
    argv = ["--data", str(data["train"]), "--backbone", BACKBONE, "--out-dir", str(out)]
    argv += ["--steps", "1", "--num-frames", "8", "--prompts-per-step", "1", "--num-rollouts", "3"]
    argv += ["--hidden-dim", "64", "--num-layers", "1", "--num-heads", "2", *variant]
    assert main(argv) == 0
    (record,) = metric_lines(out)
    assert record["rollouts"] == 3 and 0 <= record["reward"] <= 1 and record["loss"] is not None
    assert (out / FINAL / "model.safetensors").is_file()
    if "--attention-weight" in variant:  # off
        assert record["attention_loss"] == 0 and record["attention_agreement"] is None
    else:
        assert record["attention_loss"] > 0 and 0 <= record["attention_agreement"] <= 1


def test_probe_credit_runs_k_probes_per_prompt_once_per_run(data, tmp_path):
    """2 prompts of 4 chunks: step 1 scores 8 probe rows; step 2 (the next epoch, the same two
    prompts) finds them all in the run's cache."""
    out = tmp_path / "run"
    argv = ["--data", str(data["val"]), "--backbone", BACKBONE, "--out-dir", str(out)]
    argv += ["--steps", "2", "--num-frames", "8", "--prompts-per-step", "2", "--num-rollouts", "3"]
    argv += ["--hidden-dim", "64", "--num-layers", "1", "--num-heads", "2", "--max-new-tokens", "4"]
    argv += ["--probe-credit", "1", "--advantage", "capo_chunk", "--attention-weight", "0"]
    assert main(argv) == 0
    first, second = metric_lines(out)
    assert (first["probe_rows"], second["probe_rows"]) == (8, 0)
    assert 0 <= first["probe_gap"] <= 1 and second["probe_gap"] == first["probe_gap"]
    assert first["loss"] is not None and (out / FINAL / "model.safetensors").is_file()


def test_attention_distillation_needs_the_query_detector(data, tmp_path, capsys):
    config = tmp_path / "allocator.json"
    config.write_text(json.dumps({**SMALL_ALLOCATOR, "query_match": False}))
    argv = ["--data", str(data["train"]), "--backbone", BACKBONE, "--out-dir", str(tmp_path)]
    argv += ["--allocator-config", str(config), "--attention-weight", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: --attention-weight needs the allocator's query detector" in err


def test_budget_fits_every_sampled_allocation(data, tmp_path):
    out = tmp_path / "run"
    argv = ["--data", str(data["train"]), "--backbone", BACKBONE, "--out-dir", str(out)]
    argv += ["--steps", "1", "--num-frames", "8", "--prompts-per-step", "2", "--num-rollouts", "4"]
    argv += ["--hidden-dim", "64", "--num-layers", "1", "--num-heads", "2", "--budget", "0.3"]
    assert main(argv) == 0
    (record,) = metric_lines(out)
    assert 0 < record["retention"] <= 0.3


def test_the_operator_is_applied_inside_the_rollouts(data, tmp_path):
    """--operator select+prune: every sampled allocation (and validation) is selected within the
    encode budget and pruned to the budget after the tower, as at inference with
    learned+select+prune, so the cost CAPO sees is the tokens that reach the language model."""
    out = tmp_path / "run"
    argv = ["--data", str(data["train"]), "--backbone", BACKBONE, "--out-dir", str(out)]
    argv += ["--steps", "1", "--num-frames", "8", "--prompts-per-step", "2", "--num-rollouts", "4"]
    argv += ["--hidden-dim", "64", "--num-layers", "1", "--num-heads", "2", "--budget", "0.3"]
    argv += ["--operator", "select+prune", "--encode-budget", "0.6", "--val-data", str(data["val"])]
    argv += ["--val-size", "2", "--val-every", "1", "--max-new-tokens", "2"]
    assert main(argv) == 0
    pipeline = Pipeline(Backbone.load(BACKBONE))
    vanilla = pipeline.vanilla_tokens(
        pipeline.decode(str(data["video"]), Request("?", num_frames=8))
    )
    pruned = math.floor(0.3 * vanilla + 1e-9) / vanilla  # every rollout: exactly the budget
    records = metric_lines(out)
    (record,) = [r for r in records if r["split"] == "train"]
    (val,) = [r for r in records if r["split"] == "val"]
    assert record["retention"] == pytest.approx(pruned) and val["retention"] == pytest.approx(
        pruned
    )
    saved = json.loads((out / FINAL / CONFIG_FILE).read_text())
    assert saved["operator"] == "select+prune" and saved["encode_budget"] == 0.6


# ------------------------------------------------------------------------------------ boundaries
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-rollouts", "1"], "--num-rollouts must be at least 2"),
        (["--reward", "bleu"], "--reward must be one of"),
        (["--steps", "two"], "invalid int value"),
        (["--lr", "0"], "--lr must be positive"),
        (["--budget", "1.5"], "--budget must be in (0, 1]"),
        (["--probe-credit", "-1"], "--probe-credit must be 0 or positive"),
        (["--answers-per-rollout", "2", "--reward", "logprob"], "needs --reward grade"),
        (["--operator", "prune", "--reward", "logprob"], "--operator prune needs --reward grade"),
        (["--operator", "drop"], "--operator must be one of"),
        (["--encode-budget", "0"], "--encode-budget must be in (0, 1]"),
        (["--init-allocator", "x", "--hidden-dim", "64"], "drop --hidden-dim"),
        (["--bogus", "1"], "unrecognized arguments"),
    ],
)
def test_bad_command_lines_exit_2_with_one_error_line(data, extra, message, capsys):
    assert main(["--data", str(data["train"]), *extra]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err and "Traceback" not in err


def test_missing_inputs_exit_2(data, tmp_path, capsys):
    assert main(["--steps", "1"]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "none.jsonl"), "--out-dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "c.yaml"
    bad.write_text("steps: 3\nnum_rolouts: 4\n")
    assert main(["--config", str(bad), "--data", str(data["train"])]) == 2
    assert "unknown fields: num_rolouts" in capsys.readouterr().err


def test_config_file_gives_defaults_and_flags_win(data, smoke, tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(f"data: {data['train']}\nsteps: 3\nnum-rollouts: 4\nval_data: null\n")
    config = parse_config(["--config", str(yaml_file), "--steps", "5"])
    assert (config.steps, config.num_rollouts, config.val_data) == (5, 4, None)
    out, saved, _ = smoke  # a run's train_config.json reproduces its config
    assert parse_config(["--config", str(out / FINAL / CONFIG_FILE)]) == saved


def test_resume_rules(data, smoke, tmp_path):
    out, _, _ = smoke
    config = parse_config(run_args(data, out, steps=4))
    with pytest.raises(ResAdaptError, match="--resume auto"):
        find_resume(config.out_dir, config.resume)  # an existing run is never overwritten unasked
    config.resume = "auto"
    found = find_resume(config.out_dir, config.resume)
    assert found is not None and found.name in ("checkpoint-4", FINAL)
    config.out_dir, config.resume = str(tmp_path / "fresh"), "auto"
    assert find_resume(config.out_dir, config.resume) is None


# ------------------------------------------------------------------------------- fast invariants
def test_each_step_splits_its_prompts_over_processes_and_epochs_are_permutations():
    for step in range(3):
        shards = [step_positions(step, 5, rank, 2) for rank in range(2)]
        assert sorted(shards[0] + shards[1]) == list(range(step * 5, step * 5 + 5))
        assert not set(shards[0]) & set(shards[1])
    order = epoch_order(7, seed=3, epoch=1)
    assert sorted(order.tolist()) == list(range(7))
    assert (order == epoch_order(7, seed=3, epoch=1)).all()
    assert not (order == epoch_order(7, seed=3, epoch=2)).all()


def test_allocator_knobs_override_the_config_file(data, tmp_path):
    backbone = Backbone.load(BACKBONE)
    base = tmp_path / "alloc.json"
    base.write_text(json.dumps({**SMALL_ALLOCATOR, "num_layers": 3}))
    config = TrainConfig(data=str(data["train"]), allocator_config=str(base), num_layers=1)
    resolved = resolve_allocator_config(config, backbone)
    assert (resolved.hidden_dim, resolved.num_layers, resolved.vocab_size) == (64, 1, 512)
    assert resolved.frames_per_chunk == backbone.geometry.frames_per_chunk
    config = TrainConfig(data=str(data["train"]), query_encoder="backbone", **{"hidden_dim": 64})
    embed = backbone.model.get_input_embeddings().weight.shape[1]
    assert resolve_allocator_config(config, backbone).query_embed_dim == embed


def test_saved_allocator_records_its_backbone_and_a_model_card(smoke):
    """final/ names what it was trained against, and its card says how to train it again."""
    out, _, _ = smoke
    saved = json.loads((out / FINAL / "config.json").read_text())
    signature = compat.backbone_signature(Backbone.load(BACKBONE))
    for key, value in signature.items():
        assert saved[key] == value, key
    card = (out / FINAL / "README.md").read_text()
    assert f"python -m resadapt.train --config {CONFIG_FILE}" in card
    assert "accuracy" in card  # the latest validation figures
    assert load_allocator(str(out / FINAL), Backbone.load(BACKBONE)).warning is None
