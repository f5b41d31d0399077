"""``python -m resadapt.train_backbone``: train the offline world's tiny Qwen2.5-VL from scratch.

Owns the recipe that makes a ~2 M-parameter Qwen2.5-VL (the real transformers class, processor and
a locally trained tokenizer) answer the synthetic tasks of :mod:`resadapt.world.synth` on a CPU,
and writes it as an ordinary checkpoint folder (``assets/backbone`` by default) that
``Backbone.load`` reads like any real one. Knows nothing about allocators or CAPO.

Recipe (early probes in docs/results.md: naive end-to-end training stays at chance, because at
initialisation the visual tokens are all alike and the tower's gradients are tiny):
  1. Vision warm-up: the tower alone learns the grating class of every card chunk through a
     linear head on its max-pooled merged tokens, first on 56-px frames (mostly card), then at
     full size with a per-token card-colour head added (``synth.token_labels``).
  2. Joint training with the language-model loss on the answer (the option letter and the
     end-of-turn token) plus auxiliary losses, over a curriculum of chunk and card counts
     (``--schedule``: few chunks and cards first, then the full task, a stretch at 16 chunks for
     the long task, and the main task again at the end). Binding the question's colour word to
     its card is taught as two hops: the state of the position that predicts the letter names
     the question's colour (a linear probe at ``--bind-layer``), and head 0 of that layer is
     trained to put its attention on the queried card's tokens.
  3. Every chunk's size is drawn at random (``--scale-mix``), the way allocators will resize
     them, and ``--long-mix`` of the main-task clips are sampled from twice as many source
     frames, so a card can fill only one frame of its chunk (the long task seen at a higher
     sampling rate).
  4. A stage may name its task (``CHUNKSxCARDS:STEPS@TASK``: main, count or mixed; main by
     default). ``--init-from`` continues from a trained checkpoint (its weights and tokenizer, fresh
     probes) instead of building one, so new tasks are stages appended to a finished recipe. The
     attention-head target (the second hop) is given only to questions whose evidence is in one
     chunk: count's evidence is spread over several, and its question gets the other targets only
     (the colour probe, whose target there is "no colour", the per-token colours and the
     per-chunk grating classes) and one of its own: a probe reads the count from the answer
     position after layer ``--bind-layer``. Every token of every chunk, at any size, also learns
     whether its chunk shows a card (a count is the share of tokens that say so).
Inputs go through the same code as inference — ``Backbone.prepare`` on chunks resized by
``video.resize_frames`` and prompts from ``data.Example.prompt`` — so the trained model sees
exactly what the pipeline gives it.

Long runs checkpoint atomically every ``--checkpoint-every`` steps into ``--work-dir`` and
``--resume`` continues from there. Command (one CPU thread):
``python -m resadapt.train_backbone --out-dir assets/backbone --threads 1``; the count/mixed
continuation is in docs/offline-world.md (``--init-from assets/backbone``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from resadapt import cli
from resadapt.backbone import Backbone
from resadapt.checkpoint import save_folder_atomic
from resadapt.cli import option
from resadapt.errors import ResAdaptError
from resadapt.world.clips import Clip, chunked_video, example_of, make_clip, sampled
from resadapt.world.losses import TokenHeads, batch_losses
from resadapt.world.synth import (
    COLOUR_NAMES,
    COUNT_RANGE,
    MIXTURES,
    generate_sample,
    token_labels,
)
from resadapt.world.tiny import build_tiny_qwen2_5_vl, build_tokenizer

logger = logging.getLogger(__name__)

HELD_OUT_SEED_OFFSET = 10_000_000
"""Evaluation samples use seeds from here on; training draws seeds below it."""
STAGE_TASKS = ("main", "count", "mixed")
"""Tasks a joint stage can train on (``@TASK`` in ``--schedule``)."""
CORPUS_TASKS = ("main", "exact", "long", "temporal", "digit")
"""Tasks whose text trains a fresh tokenizer: the ones the bundled tokenizer was made from, so the
original recipe still builds the same tokenizer (the byte-level BPE reads any other text)."""
SMALLEST_SCALE = 1e-6
"""A chunk scale that the geometry raises to the smallest size (min_pixels): the eval's floor."""


@dataclass
class BackboneTrainConfig:
    """Everything that defines a tiny-backbone training run (saved next to the checkpoint)."""

    out_dir: str = option("final checkpoint folder", "assets/backbone")
    work_dir: str = option("resumable checkpoints and metrics.jsonl", "runs/backbone")
    resume: bool = option("continue from --work-dir", False)
    init_from: str = option(
        "start from this checkpoint folder (weights and tokenizer, e.g. assets/backbone) instead "
        "of building a model; empty: build from scratch",
        "",
    )
    seed: int = option("seed of weights, data and scale draws", 0)
    size: int = option("frame side in pixels (6 × 28-px tokens)", 168)
    card_px: int = option("card side in pixels", 48)
    hidden: int = option("width of tower and language model", 128)
    text_layers: int = option("language-model layers", 4)
    vision_depth: int = option("vision-tower blocks", 4)
    heads: int = option("attention heads", 4)
    batch_size: int = option("clips per joint step", 16)
    vision_batch_size: int = option("clips per vision warm-up step", 32)
    lr: float = option("peak AdamW learning rate", 1e-3)
    weight_decay: float = option("AdamW weight decay", 0.01)
    grad_clip: float = option("gradient-norm clip", 1.0)
    vision_schedule: str = option(
        "vision warm-up: SIDExCHUNKS:STEPS, comma separated (a 56-px frame is "
        "mostly card, so the grating is learned there first)",
        "56x1:150,168x2:60",
    )
    schedule: str = option(
        "joint curriculum: CHUNKSxCARDS:STEPS[@TASK], comma separated; TASK main (default), count "
        "or mixed; count parts ignore CARDS (2-5 cards of their own) and need 5+ chunks",
        "1x1:100,2x2:200,4x3:200,8x3:300,16x3:100,8x3:200",
    )
    scale_mix: float = option("probability that a chunk is drawn at a random scale", 0.5)
    min_scale: float = option("smallest random chunk scale", 0.1)
    uniform_mix: float = option(
        "probability that a clip's chunks all get one random scale (uniform downscaling, the "
        "count task's low-resolution case); drawn after --scale-mix",
        0.0,
    )
    long_mix: float = option("share of clips sampled from twice as many source frames", 0.25)
    aux_weight: float = option("weight of the per-token losses", 0.5)
    presence_weight: float = option(
        "weight, within the per-token losses, of 'my chunk shows a card' on every visual token "
        "(the count task's target; 0: off, as in the main-only recipe)",
        0.0,
    )
    tie_colour: bool = option("score token colours against the LM's colour-word embeddings", False)
    bind_layer: int = option("language-model layer whose head 0 learns to find the card", 2)
    eval_every: int = option("steps between evaluations", 200)
    eval_size: int = option("held-out clips per evaluation", 64)
    checkpoint_every: int = option("steps between checkpoints", 100)
    threads: int = option("torch threads (0: all cores)", 0)

    def __post_init__(self) -> None:
        if self.size % 28:
            raise ResAdaptError(
                f"--size must be a multiple of 28 (the token side), got {self.size}"
            )
        if not all(0 <= p <= 1 for p in (self.scale_mix, self.long_mix, self.uniform_mix)):
            raise ResAdaptError(
                "--scale-mix, --long-mix and --uniform-mix must be probabilities in [0, 1]"
            )
        if not 0 <= self.bind_layer < self.text_layers:
            raise ResAdaptError(
                f"--bind-layer must be a language-model layer, 0 to {self.text_layers - 1}, "
                f"got {self.bind_layer}"
            )
        if not 0 < self.min_scale <= 1:
            raise ResAdaptError(f"--min-scale must be in (0, 1], got {self.min_scale}")
        self.stages()  # validates the schedules
        self.vision_stages()

    def vision_stages(self) -> list[tuple[int, int, int]]:
        """(frame side, chunks, steps) of every vision warm-up stage (one card per chunk); none
        when ``--vision-schedule`` is empty."""
        stages = (
            self._parse(self.vision_schedule, "--vision-schedule") if self.vision_schedule else []
        )
        for *_, task in stages:
            if task != "main":
                raise ResAdaptError(f"--vision-schedule stages are main-task only, got @{task}")
        return [(side, chunks, steps) for side, chunks, steps, _ in stages]

    def stages(self) -> list[tuple[int, int, int, str]]:
        """(chunks, cards, steps, task) of every joint stage."""
        out = self._parse(self.schedule, "--schedule")
        for chunks, cards, _, task in out:
            if not 1 <= cards <= chunks:
                raise ResAdaptError(f"--schedule needs 1 <= cards <= chunks, got {chunks}x{cards}")
            if task != "main" and chunks < COUNT_RANGE[1]:
                raise ResAdaptError(
                    f"--schedule stage {chunks}x{cards}@{task} has a count part, which needs at "
                    f"least {COUNT_RANGE[1]} chunks"
                )
        return out

    @staticmethod
    def _parse(text: str, flag: str) -> list[tuple[int, int, int, str]]:
        out = []
        for part in text.split(","):
            body, _, task = part.partition("@")
            task = task or "main"
            try:
                shape, steps = body.split(":")
                a, b = (int(x) for x in shape.split("x"))
                out.append((a, b, int(steps), task))
            except ValueError as e:
                raise ResAdaptError(
                    f"{flag} part {part!r} is not AxB:STEPS[@TASK] (e.g. 4x3:250)"
                ) from e
            if min(a, b, int(steps)) < 0:
                raise ResAdaptError(f"{flag} part {part!r} has a negative number")
            if task not in STAGE_TASKS:
                raise ResAdaptError(
                    f"{flag} part {part!r} names task {task!r}; choose {', '.join(STAGE_TASKS)}"
                )
        return out

    @property
    def total_steps(self) -> int:
        return sum(s for *_, s in self.vision_stages()) + sum(s for _, _, s, _ in self.stages())

    def stage_at(self, step: int) -> tuple[str, int, int, int, str]:
        """("vision" | "joint", chunks, cards, frame side, task) at a 0-based step."""
        for side, chunks, steps in self.vision_stages():
            if step < steps:
                return "vision", chunks, chunks, side, "main"
            step -= steps
        for chunks, cards, steps, task in self.stages():
            if step < steps:
                return "joint", chunks, cards, self.size, task
            step -= steps
        chunks, cards, _, task = self.stages()[-1]
        return "joint", chunks, cards, self.size, task


def task_corpus(num: int = 200) -> list[str]:
    """Prompts and answers of the synthetic tasks: the text the tokenizer's merges come from."""
    lines = []
    for seed in range(num):
        task = CORPUS_TASKS[seed % len(CORPUS_TASKS)]
        sample = generate_sample(seed, task=task, num_frames=4, num_cards=1, size=56, card_px=14)
        lines += [example_of(sample).prompt(), sample.answer]
    return lines


@torch.no_grad()
def evaluate(
    backbone: Backbone,
    cfg: BackboneTrainConfig,
    chunks: int,
    cards: int,
    retention: float | None,
    task: str = "main",
    scale: float = 1.0,
) -> float:
    """Accuracy of the first answer token on held-out clips of ``task`` (main or count).

    Every chunk at ``scale`` (``SMALLEST_SCALE``: the smallest size), or, with ``retention``,
    at one scale fitted to that share of the tokens (the uniform baseline at a budget).
    """
    right = 0
    scales = np.full(chunks, scale)
    cards = None if task == "count" else cards  # count: its own number of cards (2-5)
    for start in range(0, cfg.eval_size, cfg.batch_size):
        clips = []
        for i in range(start, min(cfg.eval_size, start + cfg.batch_size)):
            seed = HELD_OUT_SEED_OFFSET + i
            sample = generate_sample(
                seed, task=task, num_frames=chunks * 2, num_cards=cards, size=cfg.size,
                card_px=cfg.card_px,
            )  # fmt: skip
            labels = token_labels(sample, backbone.geometry.factor)
            clips.append(Clip(sample, sampled(sample, np.arange(chunks * 2)), scales, *labels))
        videos = [chunked_video(backbone, c, c.scales, retention) for c in clips]
        examples = [example_of(c.sample) for c in clips]
        inputs = backbone.prepare(videos, [e.prompt() for e in examples])
        logits = backbone.model(**inputs).logits[:, -1]  # (B, V)
        predicted = backbone.tokenizer.batch_decode(logits.argmax(-1)[:, None])
        right += sum(p.strip() == e.gold() for p, e in zip(predicted, examples, strict=True))
    return right / cfg.eval_size


def build(cfg: BackboneTrainConfig) -> tuple[Backbone, TokenHeads]:
    """The model to train (built from scratch, or loaded from ``--init-from``) and fresh probes."""
    if cfg.init_from:
        if not Path(cfg.init_from, "config.json").is_file():
            raise ResAdaptError(
                f"--init-from {cfg.init_from} is not a checkpoint folder (no config.json)"
            )
        backbone = Backbone.load(cfg.init_from, min_tokens=1, max_pixels=cfg.size * cfg.size)
        model, tokenizer = backbone.model, backbone.tokenizer
        if model.config.text_config.num_hidden_layers <= cfg.bind_layer:
            raise ResAdaptError(
                f"--bind-layer {cfg.bind_layer} is not a layer of the --init-from checkpoint"
            )
    else:
        tokenizer = build_tokenizer(vocab_size=512, corpus=task_corpus())
        model, processor = build_tiny_qwen2_5_vl(
            cfg.seed,
            hidden=cfg.hidden,
            layers=cfg.text_layers,
            vision_depth=cfg.vision_depth,
            heads=cfg.heads,
            max_pixels=cfg.size * cfg.size,
            min_pixels=28 * 28,
            tokenizer=tokenizer,
        )
        backbone = Backbone("tiny-qwen2.5-vl", model, processor, min_tokens=1)
    backbone.model.train().requires_grad_(True)
    # Attention weights are a training target (the binding hop), which only eager attention
    # returns; the saved config is set back to SDPA for inference.
    backbone.model.set_attn_implementation({"text_config": "eager"})
    torch.manual_seed(cfg.seed)
    words = None
    if cfg.tie_colour:
        ids = [
            tokenizer.convert_tokens_to_ids(tokenizer.tokenize(f" {c}"))[-1] for c in COLOUR_NAMES
        ]
        words = (model.get_input_embeddings(), ids)
    width = model.config.text_config.hidden_size
    return backbone, TokenHeads(model.config.vision_config.out_hidden_size, width, words)


def draw_clips(cfg: BackboneTrainConfig, step: int, factor: int) -> list[Clip]:
    """The clips of training step ``step`` (0-based), drawn from (seed, step) at its stage's chunk
    and card counts, frame side and task; in the vision phase every chunk is at full size."""
    phase, chunks, cards, side, task = cfg.stage_at(step)
    rng = np.random.default_rng([cfg.seed, step])
    batch = cfg.vision_batch_size if phase == "vision" else cfg.batch_size
    seeds = rng.integers(0, HELD_OUT_SEED_OFFSET, batch)
    clips = [make_clip(int(s), cfg, chunks, cards, rng, factor, side, task) for s in seeds]
    if phase == "vision":
        for c in clips:
            c.scales[:] = 1.0
    return clips


def held_out_scores(
    backbone: Backbone, cfg: BackboneTrainConfig, chunks: int, cards: int, task: str
) -> dict[str, float]:
    """Held-out accuracy of each part of ``task`` at full size (``val_full``), at one scale fitted
    to 10 % of the tokens (``val_uniform_0.1``) and at the smallest size (``val_smallest``); a part
    other than main suffixes its keys (``_count``). The model is left in training mode."""
    scores = {}
    backbone.model.eval()
    for part in MIXTURES.get(task, (task,)):
        name = "" if part == "main" else f"_{part}"
        scores[f"val_full{name}"] = evaluate(backbone, cfg, chunks, cards, None, part)
        scores[f"val_uniform_0.1{name}"] = evaluate(backbone, cfg, chunks, cards, 0.1, part)
        scores[f"val_smallest{name}"] = evaluate(
            backbone, cfg, chunks, cards, None, part, SMALLEST_SCALE
        )
    backbone.model.train()
    return scores


def train(cfg: BackboneTrainConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    backbone, heads = build(cfg)
    params = list(backbone.model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.total_steps
    warm = 30

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    step = 0
    state_path = work / "checkpoint"
    if cfg.resume and (state_path / "state.pt").is_file():
        state = torch.load(state_path / "state.pt", weights_only=False)
        backbone.model.load_state_dict(state["model"])
        heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = state["step"]
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed from %s at step %d", state_path, step)
    metrics = (work / "metrics.jsonl").open("a")
    t_start = time.perf_counter()
    while step < total:
        phase, chunks, cards, side, task = cfg.stage_at(step)
        clips = draw_clips(cfg, step, backbone.geometry.factor)
        t0 = time.perf_counter()
        # The colour targets join once the grating is learned on small frames (measured: with
        # them from the start, the grating class stays at chance for 200+ steps).
        colour = not (phase == "vision" and side < cfg.size)
        lm, aux, stats = batch_losses(
            backbone, heads, clips, phase == "joint", colour, cfg.bind_layer, cfg.presence_weight
        )
        loss = lm + cfg.aux_weight * aux if phase == "joint" else aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        step += 1
        record = {
            "step": step, "phase": phase, "task": task, "chunks": chunks, "cards": cards,
            "lm_loss": round(lm.item(), 4), "aux_loss": round(aux.item(), 4),
            "seconds": round(time.perf_counter() - t0, 3), **stats,
        }  # fmt: skip
        if step % 10 == 0 or step == total:
            logger.info(json.dumps(record))
        if step % cfg.eval_every == 0 or step == total:
            record |= held_out_scores(backbone, cfg, chunks, cards, task)
            logger.info("step %d eval: %s", step, json.dumps(record))
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        if step % cfg.checkpoint_every == 0 and step < total:
            state = {
                "model": backbone.model.state_dict(), "heads": heads.state_dict(),
                "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                "torch_rng": torch.get_rng_state(),
            }  # fmt: skip
            save_folder_atomic(state_path, lambda d, s=state: torch.save(s, d / "state.pt"))
    metrics.close()
    backbone.model.eval()

    backbone.model.set_attn_implementation({"text_config": "sdpa"})

    def write_final(folder: Path) -> None:
        backbone.model.save_pretrained(folder)
        backbone.processor.save_pretrained(folder)
        (folder / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))

    save_folder_atomic(Path(cfg.out_dir), write_final)
    logger.info(
        "saved %s after %d steps in %.0f s", cfg.out_dir, total, time.perf_counter() - t_start
    )
    return record


def main(argv: list[str] | None = None) -> int:
    """``python -m resadapt.train_backbone``: bad input is one ``error: …`` line and exit code 2."""
    return cli.run(partial(_train, argv))


def _train(argv: list[str] | None) -> None:
    args = cli.parse(
        argv, BackboneTrainConfig, prog="python -m resadapt.train_backbone", description=__doc__
    )
    cfg = cli.make(BackboneTrainConfig, args)
    cli.setup_logging(logging.INFO)
    train(cfg)
