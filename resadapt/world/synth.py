"""Synthetic video-QA tasks whose evidence is small, sparse in time and chosen by the question.

Owns the offline world's task generator: in-memory samples (frames + QA row) and datasets of
H.264 .mp4 files with a ``data.jsonl``. It knows nothing about backbones, models or policies.

The scene. A ``size``×``size`` video of ``num_frames`` frames (legend: T frames, K = T/2 temporal
chunks, H W pixels) shows drifting, low-contrast grey blobs with faint sensor noise. Into it,
``num_cards`` square cards of ``card_px`` pixels and distinct colours are pasted, each in exactly
one chunk — both frames (2k, 2k+1) of one chunk k, because Qwen-VL encodes frame pairs as one
temporal patch — and each in a different chunk. Each card carries a fine evidence pattern:

* ``grating`` (default): a sinusoidal grating of period ``render.GRATING_PERIOD_PX`` along each
  image axis in one of four orientations (``ORIENTATIONS``: horizontal, vertical, diagonal "/",
  antidiagonal "\\"). All four have the same per-axis frequency, so a separable resize treats
  them alike. The grating fades in over ``render.GRATING_TAPER_PX`` from the card's edges, so that
  no edge band betrays the orientation after downscaling.
* ``digit``: one small dark digit (about ``card_px / 3`` pixels tall). Secondary: a thumbnail
  still shows how much ink a digit has ("1" is lighter than "8"), so it is not resolution-clean.

The question names one card by its colour ("Which way do the stripes on the green card run?").

Why it is evidence-sparse: only the queried card answers the question — 2 of T frames and, at the
defaults, 8 % of their area (2 % of all pixels when T = 8); every other pixel is clutter or a
distractor.
Why resolution matters: the grating lives near 0.29 cycles/pixel. An antialiased resize to 1/3
(the Qwen processors' bicubic; 168 → 56 px) has its cut-off at 0.17 cycles/pixel and removes it
(tests/test_synth.py measures what is left), while the card's colour — a low-frequency
signal — survives any thumbnail. So a cheap look finds *where* the evidence is; reading it needs
full resolution there. (A box/area resize such as cv2.INTER_AREA aliases a part of the grating
into lower frequencies instead of removing it: resize with an antialiased filter.)
Why it is query-dependent and has no shortcut: colours, chunks, positions and labels are drawn
independently; the queried card is uniform among the cards, so neither its colour nor its chunk
says anything about the answer, and the question says nothing about when the card appears.
Cards of one video carry distinct labels, so reading a distractor gives a wrong answer.
(Corollary: reading every distractor but not the queried card narrows the answer by exclusion.)

Tasks (``TASKS``; variants of one code path):
  main      multiple choice A–D over the orientations, T = 16 (8 chunks), 3 cards: one chunk at
            full size costs 1/8 of the tokens.
  exact     the same, answered by the orientation word (problem_type "exact").
  long      main with T = 64: one evidence chunk among 32.
  temporal  "When is the <colour> card visible?" → "start,end" in seconds (problem_type
            "temporal_iou"); colour alone suffices, so low resolution is enough here.
  digit     "Which digit is on the <colour> card?" → "0"–"9" (problem_type "numeric").
  count     "How many cards appear in the video?" → "2"–"5" (problem_type "numeric"), T = 16:
            n cards (n uniform in 2..``num_cards``, 5 by default) of distinct colours, each in its
            own chunk. The answer needs *every* chunk but only at low resolution (a card's colour
            survives any thumbnail): the opposite of main (one chunk, at full size).
  mixed     (``MIXTURES``) each sample is main or count, chosen by its seed; the row keeps its
            part's own ``task`` and ``problem_type``, so grading and per-task reports just work.

Why count has no shortcut. The question is always the same words, the video always the same
length, and the cards' colours, positions and gratings are drawn independently of n; only seeing
which chunks show a card gives n. The chunk of the first card says a little (five cards start
earlier than two: 36 % against 25 % chance), and the first card's colour nothing.
Numeric rather than multiple choice: a count is a number, and its answer tokens ("2"–"5") differ
from main's letters, so a model that confuses the two tasks is graded wrong rather than lucky.
Busy scenes (``distractors`` = N > 0): N colourless squares (``DISTRACTOR_SHARE`` of the card
side), each carrying a grating of the cards' period (random orientation and phase) around a dark
or light grey, sit in *every* frame, never over any card's box (in any frame; they may overlap
each other). They are as salient as the cards
to anything that ranks by detail or contrast, and no question names them (they have no colour), so
a query-agnostic ranking spends tokens on them and a query-aware one need not. Their draws come
from their own stream of the seed, so a sample with N = 0 is the sample of before, and the same
seed with N > 0 is the same clip with the squares added.

A curriculum for a trainer is the keyword arguments of :func:`generate_sample`: fewer frames,
fewer cards and larger ``card_px`` are easier; :func:`token_labels` gives per-token colour and
label targets for auxiliary losses.

Determinism: a sample is a pure function of its integer seed and arguments (same seed → identical
frames and row); :func:`write_dataset` derives sample seeds from (seed, index), and stores each
in its row.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from resadapt import cli
from resadapt.cli import option
from resadapt.errors import ResAdaptError
from resadapt.world.render import (
    DEFAULT_CRF,
    DIGITS,
    background,
    card_pattern,
    write_video,
)

logger = logging.getLogger(__name__)

FRAMES_PER_CHUNK = 2
"""Frames per temporal chunk (Qwen-VL's temporal_patch_size): a card spans exactly one chunk."""
NOISE_STD = 2.0
"""Per-frame luminance noise, in grey levels."""
MIN_SIZE, MAX_SIZE = 56, 1024
"""Allowed frame side, in pixels."""
MIN_CARD_PX = 14
"""Smallest card side: at least one 14-px patch, four grating periods."""
MAX_FRAMES = 1024
"""Most frames per video."""
MAX_FPS = 60.0
"""Highest frame rate of written videos."""
MAX_SAMPLES = 1_000_000
"""Most samples per written dataset."""
DEFAULT_SIZE = 168
"""Default frame side, in pixels: 6 tokens of 28 px (Qwen2.5-VL) on a side."""
DEFAULT_CARD_PX = 48
"""Default card side, in pixels."""
DEFAULT_FPS = 2.0
"""Default frame rate of a sample's timeline (and of written videos)."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 55, 55),
    "green": (55, 170, 70),
    "blue": (60, 90, 200),
    "yellow": (195, 185, 55),
    "purple": (150, 60, 190),
    "cyan": (55, 175, 190),
}
"""Card colours (RGB). Channels stay within [55, 200] so the ±45 grating never clips; every
colour is far from grey (max − min channel ≥ 115) while the clutter is nearly grey (< 30)."""
COLOUR_NAMES = tuple(COLOURS)
ORIENTATIONS = ("horizontal", "vertical", "diagonal", "antidiagonal")
"""Grating classes, named by the direction the stripes run ("diagonal" rises like "/")."""
DISTRACTOR_GREYS = (70.0, 180.0)
"""Grey levels (all three channels) a distractor square's grating sits on: darker or lighter than
the clutter (95-150), so it stands out as much as a card; ±45 of grating stays within [25, 225]."""
MAX_DISTRACTORS = 16
"""Most distractor squares per clip."""
DISTRACTOR_STREAM = 0x44495354
"""Second entropy word of a sample's distractor draws (``default_rng([seed, DISTRACTOR_STREAM])``):
the sample's own draws stay those of a clip without distractors."""
DISTRACTOR_SHARE = 5 / 6
"""Side of a distractor square as a share of the card side (40 px beside 48-px cards)."""
PLACEMENT_TRIES = 10_000
"""Random corners tried per distractor before the clip is refused as too crowded."""
COUNT_RANGE = (2, 5)
"""Smallest and largest answer of the count task (cards in the video); its ``num_cards`` is the
largest answer, so it needs that many chunks."""
OPTION_LETTERS = "ABCD"
OPTION_TEXT = ("horizontal", "vertical", "diagonal (/)", "antidiagonal (\\)")


@dataclass(frozen=True)
class TaskSpec:
    """One task variant: what the cards carry, how the question is asked, and its defaults."""

    name: str
    evidence: str
    """Card pattern: "grating" or "digit"."""
    problem_type: str
    """Grader: "multiple_choice", "exact", "numeric" or "temporal_iou"."""
    num_frames: int
    """Default frames per video."""
    num_cards: int
    """Default cards per video (one queried, the rest distractors)."""
    help: str


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("main", "grating", "multiple_choice", 16, 3, "stripe direction, choices A-D"),
        TaskSpec("exact", "grating", "exact", 8, 3, "stripe direction as a word"),
        TaskSpec("long", "grating", "multiple_choice", 64, 3, "main, one evidence chunk of 32"),
        TaskSpec("temporal", "grating", "temporal_iou", 8, 3, "when the card is visible, seconds"),
        TaskSpec("digit", "digit", "numeric", 8, 3, "digit on the card"),
        TaskSpec("count", "grating", "numeric", 16, 5, "how many cards, 2-5 (numeric)"),
    )
}
MIXTURES: dict[str, tuple[str, ...]] = {"mixed": ("main", "count")}
"""Tasks whose samples come from several ``TASKS``: part ``seed % len(parts)`` at the same seed,
so a row's own ``task`` and ``seed`` reproduce it."""
TASK_CHOICES = (*TASKS, *MIXTURES)
"""Every ``--task`` of ``python -m resadapt.synth``."""


@dataclass(frozen=True)
class Card:
    """One card: its colour, its label, the chunk that shows it and its box in pixels."""

    colour: str
    label: str
    """Orientation name or digit."""
    label_index: int
    """Index of ``label`` in ORIENTATIONS or DIGITS."""
    chunk: int
    top: int
    left: int
    size: int

    @property
    def frames(self) -> tuple[int, ...]:
        first = self.chunk * FRAMES_PER_CHUNK
        return tuple(range(first, first + FRAMES_PER_CHUNK))


@dataclass(frozen=True)
class Sample:
    """One generated video and its question; ``row()`` is its data.jsonl line."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    question: str
    answer: str
    options: tuple[str, ...] | None
    problem_type: str
    task: str
    seed: int
    evidence_frames: tuple[int, ...]
    """Frames showing the queried card (count: every card): the only ones that answer the
    question."""
    cards: tuple[Card, ...]
    query: int
    """Index into ``cards`` of the queried card (count: the first card)."""
    fps: float
    distractors: tuple[tuple[int, int], ...] = ()
    """(top, left) of every distractor square (:func:`distractor_px` on a side), in every frame."""

    @property
    def answer_index(self) -> int:
        """Class index of the answer (orientation or digit), for classification heads."""
        return self.cards[self.query].label_index

    def row(self, video: str) -> dict:
        """The data.jsonl row for this sample stored at ``video``."""
        row = {"video": video, "question": self.question, "answer": self.answer}
        if self.options is not None:
            row["options"] = list(self.options)
        row.update(
            problem_type=self.problem_type,
            task=self.task,
            seed=self.seed,
            evidence_frames=list(self.evidence_frames),
        )
        if self.distractors:  # a sparse clip's row is the row of before
            row["distractors"] = len(self.distractors)
        return row


def generate_sample(
    rng_or_seed: int | np.random.Generator,
    *,
    task: str = "main",
    num_frames: int | None = None,
    size: int = DEFAULT_SIZE,
    num_cards: int | None = None,
    card_px: int = DEFAULT_CARD_PX,
    fps: float = DEFAULT_FPS,
    distractors: int = 0,
) -> Sample:
    """Render one sample in memory (no file I/O). A Generator yields a fresh integer seed first,
    so every sample can be reproduced from ``sample.seed`` and the same arguments. A mixture
    (``MIXTURES``) renders its part ``seed % len(parts)`` at the same seed. ``distractors``: grey
    grating squares in every frame (see the module's "Busy scenes")."""
    if isinstance(rng_or_seed, np.random.Generator):
        seed = int(rng_or_seed.integers(2**31))
    else:
        seed = int(rng_or_seed)
        if seed < 0:
            raise ResAdaptError(f"the seed must be a non-negative integer, got {seed}")
    spec = _task_spec(part_of(task, seed))
    num_frames = spec.num_frames if num_frames is None else num_frames
    num_cards = spec.num_cards if num_cards is None else num_cards
    _validate(spec, num_frames, size, num_cards, card_px, fps, distractors)
    rng = np.random.default_rng(seed)

    num_chunks = num_frames // FRAMES_PER_CHUNK
    draw = _count_cards if spec.name == "count" else _distinct_cards
    cards, phases, query = draw(rng, spec, num_chunks, num_cards, size, card_px)

    video = background(rng, num_frames, size)  # (T, H, W, 3) float32
    corners = _paint_distractors(video, seed, distractors, cards, card_px)
    for card, phase in zip(cards, phases, strict=True):
        pattern = card_pattern(spec.evidence, card.label_index, card_px, phase)  # (c, c)
        rgb = np.asarray(COLOURS[card.colour], np.float32)
        box = np.s_[card.top : card.top + card_px, card.left : card.left + card_px]
        for t in card.frames:
            video[t][box] = rgb + pattern[:, :, None]
    video += NOISE_STD * rng.standard_normal((num_frames, size, size, 1), dtype=np.float32)
    frames = np.clip(np.rint(video), 0, 255).astype(np.uint8)  # (T, H, W, 3)

    queried = cards[query]
    question, answer, options = _question_answer(spec, queried, fps, cards)
    shown = cards if spec.name == "count" else [queried]
    return Sample(
        frames=frames,
        question=question,
        answer=answer,
        options=options,
        problem_type=spec.problem_type,
        task=spec.name,
        seed=seed,
        evidence_frames=tuple(sorted(t for c in shown for t in c.frames)),
        cards=cards,
        query=query,
        fps=float(fps),
        distractors=corners,
    )


def _paint_distractors(
    video: np.ndarray, seed: int, num: int, cards: tuple[Card, ...], card_px: int
) -> tuple[tuple[int, int], ...]:
    """Paint ``num`` grey grating squares into every frame of ``video`` (T, H, W, 3) float32, in
    place, away from every card's box and from each other; returns their (top, left) corners.
    Draws from the seed's own distractor stream; ResAdaptError when they do not fit."""
    if num == 0:
        return ()
    rng = np.random.default_rng([seed, DISTRACTOR_STREAM])
    size = video.shape[1]
    side = distractor_px(card_px)
    corners: list[tuple[int, int]] = []
    for _ in range(num):
        for _ in range(PLACEMENT_TRIES):
            top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            if all(_apart(top, left, side, c.top, c.left, c.size) for c in cards):
                break
        else:
            raise ResAdaptError(
                f"a distractor of {side} px does not fit beside {len(cards)} cards of {card_px} px "
                f"in a {size}-px frame: lower --num-cards or --card-px"
            )
        corners.append((top, left))
        grey = float(rng.choice(DISTRACTOR_GREYS))
        label = int(rng.integers(len(ORIENTATIONS)))
        pattern = card_pattern("grating", label, side, rng.uniform(0.0, 2 * math.pi))
        video[:, top : top + side, left : left + side] = (grey + pattern)[None, :, :, None]
    return tuple(corners)


def distractor_px(card_px: int) -> int:
    """Side of a distractor square: ``DISTRACTOR_SHARE`` of the card's, at least ``MIN_CARD_PX``."""
    return max(MIN_CARD_PX, round(card_px * DISTRACTOR_SHARE))


def _apart(top: int, left: int, side: int, other_top: int, other_left: int, other: int) -> bool:
    """Whether the squares (top, left, side) and (other_top, other_left, other) do not overlap."""
    return (
        top + side <= other_top
        or other_top + other <= top
        or left + side <= other_left
        or other_left + other <= left
    )


def part_of(task: str, seed: int) -> str:
    """The task a sample of ``task`` at ``seed`` is: a mixture's part ``seed % len(parts)``, or
    ``task`` itself."""
    parts = MIXTURES.get(task, (task,))
    return parts[seed % len(parts)]


def _distinct_cards(
    rng: np.random.Generator,
    spec: TaskSpec,
    num_chunks: int,
    num_cards: int,
    size: int,
    card_px: int,
) -> tuple[tuple[Card, ...], np.ndarray, int]:
    """Cards of distinct colours and labels in distinct chunks, their grating phases (N,) and the
    queried card's index (uniform among the cards)."""
    num_classes = len(ORIENTATIONS) if spec.evidence == "grating" else len(DIGITS)
    chunks = rng.choice(num_chunks, num_cards, replace=False)
    colours = rng.choice(len(COLOURS), num_cards, replace=False)
    labels = rng.choice(num_classes, num_cards, replace=False)  # distinct, independent of colour
    corners = rng.integers(0, size - card_px + 1, size=(num_cards, 2))
    phases = rng.uniform(0.0, 2 * math.pi, num_cards)
    query = int(rng.integers(num_cards))
    names = ORIENTATIONS if spec.evidence == "grating" else DIGITS
    cards = _cards([COLOUR_NAMES[c] for c in colours], names, labels, chunks, corners, card_px)
    return cards, phases, query


def _count_cards(
    rng: np.random.Generator,
    spec: TaskSpec,
    num_chunks: int,
    max_count: int,
    size: int,
    card_px: int,
) -> tuple[tuple[Card, ...], np.ndarray, int]:
    """The count task's cards in chunk order: n (uniform in COUNT_RANGE[0]..``max_count``) cards of
    distinct colours, one per chunk, random gratings. Returns (cards, phases (N,), 0)."""
    n = int(rng.integers(COUNT_RANGE[0], max_count + 1))
    chunks = np.sort(rng.choice(num_chunks, n, replace=False))
    colours = rng.choice(len(COLOURS), n, replace=False)
    labels = rng.integers(len(ORIENTATIONS), size=n)
    corners = rng.integers(0, size - card_px + 1, size=(n, 2))
    phases = rng.uniform(0.0, 2 * math.pi, n)
    cards = _cards(
        [COLOUR_NAMES[c] for c in colours], ORIENTATIONS, labels, chunks, corners, card_px
    )
    return cards, phases, 0


def _cards(
    colours: list[str],
    names: tuple[str, ...],
    labels: np.ndarray,
    chunks: np.ndarray,
    corners: np.ndarray,
    card_px: int,
) -> tuple[Card, ...]:
    """Cards from per-card draws: colour names (N,), label indices into ``names`` (N,), chunks
    (N,), top-left corners (N, 2)."""
    return tuple(
        Card(
            colour=colour,
            label=names[labels[i]],
            label_index=int(labels[i]),
            chunk=int(chunks[i]),
            top=int(corners[i, 0]),
            left=int(corners[i, 1]),
            size=card_px,
        )
        for i, colour in enumerate(colours)
    )


def token_labels(
    sample: Sample, factor: int, indices: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-token targets at full resolution: (colour_ids, label_ids), each (K, H//f, W//f) int64.

    ``factor`` is the backbone's pixels per merged token side (patch × merge, from its config).
    ``indices`` (T,): the frames a sampler took from the sample (default: all of them); chunk k
    is sampled frames 2k and 2k + 1, and it shows a card when either of them does.
    A token is labelled with a card when the card covers at least half of its pixels; 0 means no
    card, ``1 + index`` the card's index in COLOUR_NAMES (colour) or ORIENTATIONS/DIGITS (label).
    """
    num_frames, height, width, _ = sample.frames.shape
    indices = np.arange(num_frames) if indices is None else np.asarray(indices)
    grid_h, grid_w = height // factor, width // factor
    colour_ids = np.zeros((len(indices) // FRAMES_PER_CHUNK, grid_h, grid_w), np.int64)
    label_ids = np.zeros_like(colour_ids)
    edges_h = np.arange(grid_h + 1) * factor
    edges_w = np.arange(grid_w + 1) * factor
    for card in sample.cards:
        cover_h = _overlap(edges_h, card.top, card.top + card.size)  # (grid_h,)
        cover_w = _overlap(edges_w, card.left, card.left + card.size)  # (grid_w,)
        covered = np.outer(cover_h, cover_w) * 2 >= factor * factor  # (grid_h, grid_w)
        shown = np.flatnonzero(np.isin(indices, card.frames))  # sampled frames with the card
        for k in set((shown // FRAMES_PER_CHUNK).tolist()):
            colour_ids[k][covered] = 1 + COLOUR_NAMES.index(card.colour)
            label_ids[k][covered] = 1 + card.label_index
    return colour_ids, label_ids


def write_dataset(
    out_dir: str | Path,
    num: int,
    seed: int,
    task: str = "main",
    *,
    num_frames: int | None = None,
    size: int = DEFAULT_SIZE,
    num_cards: int | None = None,
    card_px: int = DEFAULT_CARD_PX,
    fps: float = DEFAULT_FPS,
    crf: int = DEFAULT_CRF,
    distractors: int = 0,
) -> Path:
    """Write ``num`` samples as ``out_dir/videos/<task>_<i>.mp4`` and return ``out_dir/data.jsonl``.

    Video paths in the rows are relative to ``out_dir``. Sample i uses the seed derived from
    (seed, i), stored in its row.
    """
    if not 1 <= num <= MAX_SAMPLES:
        raise ResAdaptError(f"the number of samples must be in [1, {MAX_SAMPLES}], got {num}")
    if seed < 0:
        raise ResAdaptError(f"the seed must be a non-negative integer, got {seed}")
    if not 0 <= crf <= 51:
        raise ResAdaptError(f"crf must be in [0, 51], got {crf}")
    for part in MIXTURES.get(task, (task,)):
        spec = _task_spec(part)
        _validate(
            spec,
            spec.num_frames if num_frames is None else num_frames,
            size,
            spec.num_cards if num_cards is None else num_cards,
            card_px,
            fps,
            distractors,
        )
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    rows_path = out_dir / "data.jsonl"
    start = time.perf_counter()
    with rows_path.open("w") as rows:
        for i in range(num):
            sample_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
            sample = generate_sample(
                sample_seed,
                task=task,
                num_frames=num_frames,
                size=size,
                num_cards=num_cards,
                card_px=card_px,
                fps=fps,
                distractors=distractors,
            )
            video = f"videos/{task}_{i:05d}.mp4"
            write_video(out_dir / video, sample.frames, fps, crf)
            rows.write(json.dumps(sample.row(video)) + "\n")
    logger.info(
        "wrote %d %s samples to %s in %.1f s", num, task, rows_path, time.perf_counter() - start
    )
    return rows_path


def _task_spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ResAdaptError(f"unknown task {task!r}; choose one of {', '.join(TASK_CHOICES)}")
    return TASKS[task]


def _validate(
    spec: TaskSpec,
    num_frames: int,
    size: int,
    num_cards: int,
    card_px: int,
    fps: float,
    distractors: int = 0,
) -> None:
    """Raise ResAdaptError naming the first argument outside its allowed range."""
    max_cards = min(len(COLOURS), len(ORIENTATIONS) if spec.evidence == "grating" else len(DIGITS))
    chunks_needed = num_cards
    min_cards = 1
    if spec.name == "count":  # num_cards is the largest count; every card has its own chunk
        min_cards, max_cards = COUNT_RANGE
    if not min_cards <= num_cards <= max_cards:
        raise ResAdaptError(
            f"num_cards must be in [{min_cards}, {max_cards}] for task {spec.name!r}, "
            f"got {num_cards}"
        )
    if num_frames % FRAMES_PER_CHUNK or not chunks_needed * FRAMES_PER_CHUNK <= num_frames:
        raise ResAdaptError(
            f"num_frames must be a multiple of {FRAMES_PER_CHUNK} with one chunk per card "
            f"(at least {chunks_needed * FRAMES_PER_CHUNK}), got {num_frames}"
        )
    if num_frames > MAX_FRAMES:
        raise ResAdaptError(f"num_frames must be at most {MAX_FRAMES}, got {num_frames}")
    if size % 2 or not MIN_SIZE <= size <= MAX_SIZE:
        raise ResAdaptError(f"size must be even and in [{MIN_SIZE}, {MAX_SIZE}], got {size}")
    if not MIN_CARD_PX <= card_px <= size:
        raise ResAdaptError(f"card_px must be in [{MIN_CARD_PX}, {size}] (the size), got {card_px}")
    if not 0 < fps <= MAX_FPS:
        raise ResAdaptError(f"fps must be in (0, {MAX_FPS}], got {fps}")
    if not 0 <= distractors <= MAX_DISTRACTORS:
        raise ResAdaptError(f"distractors must be in [0, {MAX_DISTRACTORS}], got {distractors}")


def _question_answer(
    spec: TaskSpec, card: Card, fps: float, cards: tuple[Card, ...]
) -> tuple[str, str, tuple[str, ...] | None]:
    """Question, answer and options (multiple choice only) about the queried ``card``."""
    if spec.name == "count":
        return "How many cards appear in the video?", str(len(cards)), None
    if spec.problem_type == "temporal_iou":
        start_s = card.frames[0] / fps
        end_s = (card.frames[-1] + 1) / fps
        question = (
            f"When is the {card.colour} card visible? "
            "Answer with its start and end times in seconds, as start,end."
        )
        return question, f"{_seconds(start_s)},{_seconds(end_s)}", None
    if spec.evidence == "digit":
        return f"Which digit is on the {card.colour} card?", card.label, None
    question = f"Which way do the stripes on the {card.colour} card run?"
    if spec.problem_type == "multiple_choice":
        # Plain option texts: the data schema's prompt lists them with their letters.
        return question, OPTION_LETTERS[card.label_index], OPTION_TEXT
    assert spec.problem_type == "exact", spec
    words = ", ".join(ORIENTATIONS[:-1]) + " or " + ORIENTATIONS[-1]
    return f"{question} Answer with one word: {words}.", card.label, None


def _seconds(value: float) -> str:
    """Seconds with at most two decimals and at least one: 1.0, 0.67, 2.5."""
    text = f"{value:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _overlap(edges: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Pixels of [start, stop) inside each cell [edges[i], edges[i+1]): (len(edges) - 1,)."""
    return np.clip(np.minimum(edges[1:], stop) - np.maximum(edges[:-1], start), 0, None)


@dataclass(frozen=True)
class DatasetConfig:
    """One ``python -m resadapt.synth`` run; :func:`write_dataset` checks the ranges."""

    out: str = option("output folder (data.jsonl, videos/)")
    num: int = option("number of samples")
    seed: int = option("dataset seed (non-negative)", 0)
    task: str = option(
        "; ".join(f"{s.name}: {s.help}" for s in TASKS.values())
        + "; mixed: main and count, one or the other per sample",
        "main",
        choices=TASK_CHOICES,
    )
    frames: int | None = option("frames per video (default: the task's)", None)
    size: int = option("frame side in pixels", DEFAULT_SIZE)
    fps: float = option("frame rate of the videos", DEFAULT_FPS)
    num_cards: int | None = option(
        "cards per video (default: the task's); count: the largest count, 2-5", None
    )
    card_px: int = option("card side in pixels", DEFAULT_CARD_PX)
    crf: int = option("x264 quality, 0 = lossless", DEFAULT_CRF)
    distractors: int = option(
        "busy scenes: grey squares carrying the cards' grating, no colour, in every frame and "
        "never over a card (no question names them)",
        0,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m resadapt.synth``: bad input is one ``error: …`` line and exit code 2."""
    return cli.run(partial(_write, argv))


def _write(argv: list[str] | None) -> None:
    args = cli.parse(
        argv,
        DatasetConfig,
        prog="python -m resadapt.synth",
        description="Write synthetic evidence-sparse video-QA samples (.mp4 + data.jsonl).",
    )
    cfg = cli.make(DatasetConfig, args)
    cli.setup_logging(logging.INFO)
    try:
        write_dataset(
            cfg.out,
            cfg.num,
            cfg.seed,
            cfg.task,
            num_frames=cfg.frames,
            size=cfg.size,
            num_cards=cfg.num_cards,
            card_px=cfg.card_px,
            fps=cfg.fps,
            crf=cfg.crf,
            distractors=cfg.distractors,
        )
    except OSError as e:
        raise ResAdaptError(f"cannot write the dataset to {cfg.out}: {e.strerror or e}") from e
