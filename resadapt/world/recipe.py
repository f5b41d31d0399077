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
from torch import nn

from resadapt import cli
from resadapt.backbone import Backbone
from resadapt.checkpoint import save_folder_atomic
from resadapt.cli import option
from resadapt.errors import ResAdaptError
from resadapt.world.clips import Clip, chunked_video, example_of, make_clip, sampled
from resadapt.world.synth import (
    COLOUR_NAMES,
    COUNT_RANGE,
    MIXTURES,
    ORIENTATIONS,
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


class TokenHeads(nn.Module):
    """Linear probes: on merged visual tokens, card colour or none (7 ways), grating class (4) and
    whether the token's chunk shows a card (1 logit); on the language model's state at the answer
    position, the question's colour (7 ways) and, for count questions, the count (4 ways).
    """

    def __init__(
        self,
        width: int,
        text_width: int,
        colour_words: tuple[nn.Embedding, list[int]] | None = None,
    ):
        super().__init__()
        self.colour = nn.Linear(width, 1 + len(COLOUR_NAMES))
        self.label = nn.Linear(width, len(ORIENTATIONS))
        self.present = nn.Linear(width, 1)  # on every token: does my chunk show a card?
        self.count = nn.Linear(text_width, COUNT_RANGE[1] - COUNT_RANGE[0] + 1)
        self.question_colour = nn.Linear(text_width, 1 + len(COLOUR_NAMES))
        # Tied colour head: a token's colour logits are its dot products with the language
        # model's embeddings of the colour words (and a learned "no card" vector), so a visual
        # token and the question's colour word meet in one space. Kept out of the submodules so
        # the embedding stays owned (and optimised) by the model alone.
        self._words = colour_words
        if colour_words is not None:
            self.no_colour = nn.Parameter(torch.zeros(width))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._words is None:
            colour = self.colour(tokens)
        else:
            embedding, ids = self._words
            table = torch.cat([self.no_colour[None], embedding.weight[ids]])  # (7, D)
            colour = tokens @ table.T + self.colour.bias
        return colour, self.label(tokens)  # (N, 7), (N, 4)


def task_corpus(num: int = 200) -> list[str]:
    """Prompts and answers of the synthetic tasks: the text the tokenizer's merges come from."""
    lines = []
    for seed in range(num):
        task = CORPUS_TASKS[seed % len(CORPUS_TASKS)]
        sample = generate_sample(seed, task=task, num_frames=4, num_cards=1, size=56, card_px=14)
        lines += [example_of(sample).prompt(), sample.answer]
    return lines


def batch_losses(
    backbone: Backbone,
    heads: TokenHeads,
    clips: list[Clip],
    joint: bool,
    colour: bool = True,
    bind_layer: int = 2,
    presence_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(language-model loss, auxiliary loss, stats) of one batch.

    The auxiliary loss is the sum, in this order, of: card presence (times ``presence_weight``,
    when it is not 0), the card colour of every token (with ``colour``), the grating class of
    every chunk; with ``joint`` also the question's colour, the count (count rows) and the binding
    head's attention. Without ``joint`` the language-model loss is 0 and the language model does
    not run. ``stats``: each term's accuracy (the binding head's mean attention mass) where the
    term had rows.
    """
    model = backbone.model
    videos = [chunked_video(backbone, c, c.scales) for c in clips]
    examples = [example_of(c.sample) for c in clips]
    answers = [e.gold() for e in examples]
    inputs = backbone.prepare(videos, [e.prompt() for e in examples], answers)
    vision = model.model.get_video_features(
        inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True
    )
    chunk_tokens = vision.pooler_output  # (n_k, D) per chunk, the clips' chunks in order
    full = full_size_targets(clips, chunk_tokens)
    aux = torch.zeros(())
    stats: dict = {}
    if presence_weight:
        bce, stats["present_acc"] = presence_loss(heads, clips, chunk_tokens)
        aux = aux + presence_weight * bce
    colours = card_colour_loss(heads, full) if colour else None
    if colours is not None:
        aux = aux + colours
    labels = chunk_label_loss(heads, full)
    if labels is not None:
        aux = aux + labels[0]
        stats["chunk_label_acc"] = labels[1]
    if not joint:
        return torch.zeros(()), aux, stats
    lengths = [backbone.answer_length(a) for a in answers]  # answer + end-of-turn tokens per row
    out = answer_forward(backbone, inputs, vision, lengths)
    last = inputs["input_ids"].shape[1] - 1 - torch.tensor(lengths)  # (B,) predicts the letter
    query_colour = query_colours(clips)  # (B,)
    loss, stats["query_colour_acc"] = question_colour_loss(
        heads, out.hidden_states[bind_layer], last, query_colour
    )
    aux = aux + loss
    counts = count_probe_loss(heads, clips, out.hidden_states[bind_layer + 1], last)
    if counts is not None:
        aux = aux + counts[0]
        stats["count_probe_acc"] = counts[1]
    binding = bind_attention_loss(
        backbone, clips, inputs, out.attentions[bind_layer], last, query_colour, chunk_tokens
    )
    if binding is not None:
        aux = aux + binding[0]
        stats["bind_attention"] = binding[1]
    return out.loss, aux, stats


# Auxiliary targets exist for full-size chunks (their token grid is the label grid): the card
# colour of every token, and the grating class of every chunk that shows a card, read from
# its max-pooled tokens. (Measured: a per-token grating loss stays at chance for hundreds of
# steps; the max-pooled one learns in under 100, as docs/results.md records.)
@dataclass
class FullSizeTargets:
    """The tokens and targets of a batch's full-size chunks, in the clips' chunk order."""

    tokens: list[torch.Tensor]
    """(n, D) the merged visual tokens of each full-size chunk."""
    colours: list[torch.Tensor]
    """(n,) the card colour under each of those tokens (0: no card)."""
    pooled: list[torch.Tensor]
    """(D,) the max-pooled tokens of each full-size chunk that shows a card."""
    classes: list[int]
    """The grating class of each of those chunks."""


def full_size_targets(clips: list[Clip], chunk_tokens) -> FullSizeTargets:
    """The full-size chunks' tokens and targets; chunk_tokens: (n_k, D) per chunk, clips' order."""
    full = FullSizeTargets([], [], [], [])
    items = [(clip, k) for clip in clips for k in range(len(clip.scales))]
    for (clip, k), tokens in zip(items, chunk_tokens, strict=True):
        if tokens.shape[0] == clip.colour_ids[k].size:  # (n, D) tokens of a full-size chunk
            full.tokens.append(tokens)
            full.colours.append(torch.from_numpy(clip.colour_ids[k].reshape(-1)))
            label = int(clip.label_ids[k].max())
            if label > 0:
                full.pooled.append(tokens.max(dim=0).values)
                full.classes.append(label - 1)
    return full


def card_colour_loss(heads: TokenHeads, full: FullSizeTargets) -> torch.Tensor | None:
    """Cross-entropy of the colour head on every token of the full-size chunks against the card
    colour under it; None without a full-size chunk."""
    if not full.tokens:
        return None
    colour_logits, _ = heads(torch.cat(full.tokens))  # (N, 7)
    return nn.functional.cross_entropy(colour_logits, torch.cat(full.colours))


def chunk_label_loss(heads: TokenHeads, full: FullSizeTargets) -> tuple[torch.Tensor, float] | None:
    """(cross-entropy, accuracy) of the grating head on the max-pooled tokens of every full-size
    chunk that shows a card; None without one."""
    if not full.pooled:
        return None
    _, label_logits = heads(torch.stack(full.pooled))  # (N, classes)
    target = torch.tensor(full.classes)
    loss = nn.functional.cross_entropy(label_logits, target)
    return loss, float((label_logits.argmax(-1) == target).float().mean())


def presence_loss(heads: TokenHeads, clips: list[Clip], chunk_tokens) -> tuple[torch.Tensor, float]:
    """(binary cross-entropy, accuracy) of the presence head on every token of every chunk at any
    size against "my chunk shows a card"."""
    # A count is then the share of visual tokens that say so, times the chunks, when every chunk
    # has the same size (uniform downscaling). Off in the main-only recipe.
    flags = np.concatenate([clip.present for clip in clips])  # (sum of K,) in the chunks' order
    sizes = torch.tensor([tokens.shape[0] for tokens in chunk_tokens])
    present = torch.from_numpy(flags).float().repeat_interleave(sizes)  # (N,)
    logits = heads.present(torch.cat(chunk_tokens))[:, 0]  # (N,)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, present)
    return bce, float(((logits.detach() > 0) == (present > 0.5)).float().mean())


def answer_forward(backbone: Backbone, inputs: dict, vision, lengths: list[int]):
    """The language model on the batch with its video features, every hidden state and attention
    returned; its loss is on the last ``lengths[b]`` tokens of row b (the answer)."""
    labels_lm = torch.full_like(inputs["input_ids"], -100)
    for b, n in enumerate(lengths):
        labels_lm[b, -n:] = inputs["input_ids"][b, -n:]
    rest = {k: v for k, v in inputs.items() if k not in ("pixel_values_videos",)}
    return backbone.model(
        **rest,
        mm_encoder_outputs={"video": vision},
        labels=labels_lm,
        output_hidden_states=True,
        output_attentions=True,
    )


# Binding, taught as two hops (measured: a per-token "is the queried card" flag at the middle
# layer fired on every card, and accuracy with two cards stayed near 55-60 %):
#   1. the state of the position that predicts the letter, entering layer ``bind_layer``,
#      names the question's colour (a linear probe);
#   2. head 0 of that layer attends from there to the queried card's tokens (the loss is
#      -log of the attention mass on them), so the grating of that card is what reaches the
#      answer. Rows whose queried card is in a downscaled chunk have no target, and neither
#      have rows whose evidence spans several chunks (count): one head cannot be "the" pointer
#      to seven cards, and the answer there is a tally, not one card's grating.
def query_colours(clips: list[Clip]) -> torch.Tensor:
    """(B,) the colour each clip's question names: 1 + its index in COLOUR_NAMES, 0 for none."""
    return torch.tensor(
        [
            0 if s.task == "count" else 1 + COLOUR_NAMES.index(s.cards[s.query].colour)
            for s in (c.sample for c in clips)
        ]
    )


def question_colour_loss(
    heads: TokenHeads, states: torch.Tensor, last: torch.Tensor, query_colour: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """(cross-entropy, accuracy) of the question-colour probe (hop 1) on the state at ``last``.

    states: (B, L, D) the hidden states entering the binding layer; last, query_colour: (B,).
    """
    logits = heads.question_colour(states[torch.arange(len(last)), last])  # (B, 7)
    loss = nn.functional.cross_entropy(logits, query_colour)
    return loss, float((logits.detach().argmax(-1) == query_colour).float().mean())


def count_probe_loss(
    heads: TokenHeads, clips: list[Clip], states: torch.Tensor, last: torch.Tensor
) -> tuple[torch.Tensor, float] | None:
    """(cross-entropy, accuracy) of the count probe on the count rows' state at ``last``: the same
    target as the language model's, nearer the visual tokens; None without a count row.

    states: (B, L, D) the hidden states after the binding layer; last: (B,).
    """
    counting = [b for b, c in enumerate(clips) if c.sample.task == "count"]
    if not counting:
        return None
    rows = torch.tensor(counting)
    after = states[rows, last[rows]]  # (C, D)
    count_logits = heads.count(after)  # (C, 4)
    target = torch.tensor([int(clips[b].sample.answer) - COUNT_RANGE[0] for b in counting])
    loss = nn.functional.cross_entropy(count_logits, target)
    return loss, float((count_logits.detach().argmax(-1) == target).float().mean())


def bind_attention_loss(
    backbone: Backbone,
    clips: list[Clip],
    inputs: dict,
    attentions: torch.Tensor,
    last: torch.Tensor,
    query_colour: torch.Tensor,
    chunk_tokens,
) -> tuple[torch.Tensor, float] | None:
    """(mean -log attention mass, mean mass) of head 0 (hop 2) from ``last`` on the queried card's
    tokens, over the rows whose evidence is one full-size chunk; None without such a row.

    attentions: (B, heads, L, L) of the binding layer; last, query_colour: (B,).
    """
    attention = attentions[torch.arange(len(clips)), 0, last]  # (B, L)
    is_video = inputs["input_ids"] == backbone.processor.video_token_id  # (B, L)
    tokens_of = iter(chunk_tokens)  # (n_k, D) per chunk, in the clips' order
    masses = []
    for b, clip in enumerate(clips):
        wanted, ok, evidence_chunks = [], True, 0
        for k in range(len(clip.scales)):
            n, shown = next(tokens_of).shape[0], clip.colour_ids[k] == int(query_colour[b])
            evidence_chunks += int(shown.any())
            if n == shown.size:
                wanted.append(torch.from_numpy(shown.reshape(-1)))
            else:
                ok = ok and not shown.any()
                wanted.append(torch.zeros(n, dtype=torch.bool))
        target = torch.cat(wanted)
        if ok and evidence_chunks == 1 and clip.sample.task != "count":
            masses.append(attention[b][is_video[b]][target].sum())
    if not masses:
        return None
    mass = torch.stack(masses)
    return (-torch.log(mass.clamp_min(1e-6))).mean(), float(mass.detach().mean())


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
