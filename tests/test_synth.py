"""Synthetic task generator: determinism, schema, sparse evidence, no shortcut, resolution."""

from __future__ import annotations

import filecmp
import json
from collections import Counter

import av
import numpy as np
import pytest
from PIL import Image

from resadapt.errors import ResAdaptError
from resadapt.world import render, synth

CHROMA_CARD = 60
"""max − min channel above which a pixel belongs to a card (cards ≥ 115, clutter < 30)."""


def _chroma(frames: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 → (...) int spread between the largest and smallest channel."""
    return frames.max(-1).astype(int) - frames.min(-1).astype(int)


def _grating_energies(crop: np.ndarray) -> np.ndarray:
    """Matched filter: |projection| of a (h, w, 3) crop on each orientation's wave, (4,)."""
    grey = crop.astype(np.float64).mean(-1)
    grey -= grey.mean()
    y, x = np.mgrid[0 : grey.shape[0], 0 : grey.shape[1]]
    waves = [
        np.exp(-2j * np.pi * (kx * x + ky * y) / render.GRATING_PERIOD_PX)
        for kx, ky in render.WAVE_VECTORS
    ]
    return np.array([abs((grey * wave).sum()) / grey.size for wave in waves])


def _down_up(frame: np.ndarray, scale: float) -> np.ndarray:
    """Antialiased bicubic resize to ``scale`` and back: what the Qwen processors do to a chunk."""
    height, width, _ = frame.shape
    small = Image.fromarray(frame).resize(
        (round(width * scale), round(height * scale)), Image.BICUBIC
    )
    return np.asarray(small.resize((width, height), Image.BICUBIC))


def _crop(frame: np.ndarray, card: synth.Card) -> np.ndarray:
    return frame[card.top : card.top + card.size, card.left : card.left + card.size]


def test_same_seed_gives_identical_sample_and_other_seeds_differ():
    first, again = synth.generate_sample(7), synth.generate_sample(7)
    assert first.frames.tobytes() == again.frames.tobytes()
    assert first.row("v.mp4") == again.row("v.mp4") and first.cards == again.cards
    assert not np.array_equal(first.frames, synth.generate_sample(8).frames)
    drawn = synth.generate_sample(np.random.default_rng(0), task="exact")
    replay = synth.generate_sample(drawn.seed, task="exact")
    assert drawn.frames.tobytes() == replay.frames.tobytes() and drawn.answer == replay.answer


@pytest.mark.parametrize("task", list(synth.TASKS))
def test_sample_shapes_and_row_schema(task):
    sample = synth.generate_sample(3, task=task)
    spec = synth.TASKS[task]
    assert sample.frames.shape == (spec.num_frames, 168, 168, 3)  # (T, H, W, 3)
    assert sample.frames.dtype == np.uint8
    row = sample.row("videos/x.mp4")
    assert row["problem_type"] == spec.problem_type and row["task"] == task
    assert isinstance(row["question"], str) and isinstance(row["answer"], str)
    shown = sample.cards if task == "count" else [sample.cards[sample.query]]
    assert row["evidence_frames"] == sorted(t for c in shown for t in c.frames)
    if task != "count":
        assert sample.cards[sample.query].colour in row["question"]
    if spec.problem_type == "multiple_choice":
        assert row["answer"] in "ABCD" and len(row["options"]) == 4
        assert (
            row["options"][synth.OPTION_LETTERS.index(row["answer"])]
            == (synth.OPTION_TEXT[sample.answer_index])
        )
    else:
        assert "options" not in row
    if spec.problem_type == "temporal_iou":
        start_s, end_s = map(float, row["answer"].split(","))
        frames = row["evidence_frames"]
        assert (start_s, end_s) == (frames[0] / sample.fps, (frames[-1] + 1) / sample.fps)
    if spec.problem_type == "exact":
        assert row["answer"] in synth.ORIENTATIONS
    if spec.problem_type == "numeric":
        assert row["answer"] in synth.DIGITS
    if task == "count":
        assert row["answer"] == str(len(shown)) and len(row["evidence_frames"]) == 2 * len(shown)


@pytest.mark.parametrize("task", ["main", "digit", "long"])
def test_cards_are_visible_only_in_their_chunk_and_box(task):
    for seed in range(2 if task == "long" else 4):
        sample = synth.generate_sample(seed, task=task, num_cards=3)
        card_pixels = _chroma(sample.frames) > CHROMA_CARD  # (T, H, W)
        expected = np.zeros_like(card_pixels)
        for card in sample.cards:
            assert card.frames == (2 * card.chunk, 2 * card.chunk + 1)  # chunk-aligned pair
            for t in card.frames:
                expected[t, card.top : card.top + card.size, card.left : card.left + card.size] = 1
        assert not (card_pixels & ~expected).any(), "colour outside a card's box and chunk"
        coverage = card_pixels[expected].mean()
        assert coverage > (0.99 if task != "digit" else 0.7)
        assert len({card.chunk for card in sample.cards}) == len(sample.cards)
        labels = [card.label for card in sample.cards]
        assert len(set(labels)) == len(labels), "distractors must carry other labels"


def test_answer_is_independent_of_colour_and_timing():
    """No shortcut: colour and chunk of the queried card say nothing about the answer."""
    num = 720
    by_colour: dict[str, Counter] = {name: Counter() for name in synth.COLOUR_NAMES}
    by_chunk: dict[int, Counter] = {k: Counter() for k in range(4)}
    chunk_by_colour: dict[str, Counter] = {name: Counter() for name in synth.COLOUR_NAMES}
    for seed in range(num):
        sample = synth.generate_sample(seed, num_frames=8, size=56, card_px=14)  # fast draws
        card = sample.cards[sample.query]
        by_colour[card.colour][sample.answer] += 1
        by_chunk[card.chunk][sample.answer] += 1
        chunk_by_colour[card.colour][card.chunk] += 1
    for table, num_rows in ((by_colour, 6), (by_chunk, 4), (chunk_by_colour, 6)):
        for counts in table.values():
            total = sum(counts.values())
            assert total > 0.6 * num / num_rows
            assert len(counts) == 4
            # each of the 4 outcomes within ±50 % of uniform (binomial sd ≈ 15 % here)
            assert all(abs(n - total / 4) < 0.5 * total / 4 for n in counts.values()), counts


def test_full_resolution_reads_the_grating_and_one_third_does_not():
    """Resolution matters: a matched filter is exact at full size and at chance after 1/3."""
    full_right = low_right = 0
    full_energy, low_energy = [], []
    samples = [synth.generate_sample(seed) for seed in range(60)]
    for sample in samples:
        card = sample.cards[sample.query]
        frame = sample.frames[card.frames[0]]  # (H, W, 3)
        full = _grating_energies(_crop(frame, card))
        low = _grating_energies(_crop(_down_up(frame, 1 / 3), card))
        full_right += int(full.argmax() == card.label_index)
        low_right += int(low.argmax() == card.label_index)
        full_energy.append(full.max())
        low_energy.append(low.max())
    assert full_right == len(samples)
    assert low_right / len(samples) < 0.4  # chance is 0.25
    assert np.mean(low_energy) < 0.05 * np.mean(full_energy)


@pytest.mark.parametrize("orientation", range(4))
def test_one_third_bicubic_leaves_about_one_grey_level_of_the_grating(orientation):
    """What any reader could still see: the card's pattern alone, resized like a Qwen chunk."""
    for phase in np.linspace(0, 2 * np.pi, 4, endpoint=False):
        canvas = np.zeros((168, 168), np.float32)
        pattern = render.card_pattern("grating", orientation, 48, phase)  # (48, 48), ±45
        canvas[61:109, 60:108] = pattern
        small = np.asarray(Image.fromarray(canvas, mode="F").resize((56, 56), Image.BICUBIC))
        half = np.asarray(Image.fromarray(canvas, mode="F").resize((84, 84), Image.BICUBIC))
        assert np.abs(pattern).max() > 40
        assert np.abs(small).max() < 1.5  # below 8-bit steps and the noise (sd 2)
        assert np.abs(half).max() > 4  # at 1/2 part of it is still there: a graded curve


def test_colour_finds_the_evidence_chunk_in_tiny_thumbnails():
    """The card's colour survives a 1/6 thumbnail: a cheap look finds where to spend pixels."""
    for seed in range(20):
        sample = synth.generate_sample(seed)
        card = sample.cards[sample.query]
        target = np.asarray(synth.COLOURS[card.colour], np.float64)
        match = []
        for k in range(len(sample.frames) // synth.FRAMES_PER_CHUNK):
            thumb = np.asarray(Image.fromarray(sample.frames[2 * k]).resize((28, 28), Image.BOX))
            distance = np.linalg.norm(thumb.astype(np.float64) - target, axis=-1)  # (28, 28)
            match.append(int((distance < 40).sum()))
        assert int(np.argmax(match)) == card.chunk
        assert match[card.chunk] >= 25  # the 48-px card covers 8×8 thumbnail pixels


def _best_rule_accuracy(features: list, answers: list[str]) -> float:
    """Accuracy of the best rule answer = f(feature), fitted on the data itself (optimistic)."""
    table: dict = {}
    for feature, answer in zip(features, answers, strict=True):
        table.setdefault(feature, Counter())[answer] += 1
    return sum(max(c.values()) for c in table.values()) / len(answers)


def test_count_answer_needs_every_chunk_and_nothing_else_gives_it():
    """No shortcut for count: answers uniform in 2-5; the question text, the length, the cards'
    colours, placement and gratings do not give the answer; only which chunks show a card does."""
    samples = [
        synth.generate_sample(seed, task="count", size=56, card_px=14) for seed in range(2400)
    ]  # fast draws
    answers = [s.answer for s in samples]
    frequency = Counter(answers)
    assert set(frequency) == {"2", "3", "4", "5"}
    assert all(abs(n - 600) < 90 for n in frequency.values()), frequency  # sd ≈ 21
    for s in samples:
        assert len(s.cards) == int(s.answer) and s.frames.shape[0] == 16
        assert len({c.chunk for c in s.cards}) == len(s.cards), "one card per chunk"
        assert len({c.colour for c in s.cards}) == len(s.cards), "distinct colours"
        assert s.evidence_frames == tuple(sorted(t for c in s.cards for t in c.frames))
    rules = {
        "question text": [s.question for s in samples],
        "length": [s.frames.shape[0] for s in samples],
        "colour of the first card": [s.cards[0].colour for s in samples],
        "grating of the first card": [s.cards[0].label for s in samples],
        "corner of the first card": [
            (s.cards[0].top // 14, s.cards[0].left // 14) for s in samples
        ],
        "chunk of the first card": [s.cards[0].chunk for s in samples],
    }
    # Inherent, weak: five cards must start earlier than two (the first one's chunk alone: 36 %).
    bounds = {"chunk of the first card": 0.40}
    for name, features in rules.items():
        accuracy = _best_rule_accuracy(features, answers)
        assert accuracy < bounds.get(name, 0.30), (name, accuracy)  # chance 0.25
    chunks_shown = [tuple(c.chunk for c in s.cards) for s in samples]
    assert _best_rule_accuracy(chunks_shown, answers) == 1.0  # seeing every chunk does


def test_count_cards_survive_the_smallest_chunk():
    """Every card is still found, chunk by chunk, in a 28×28 thumbnail (the smallest chunk: one
    28-px token), and no empty chunk looks like one, so count is a low-resolution skill."""
    palette = np.asarray(list(synth.COLOURS.values()), np.float64)  # (7, 3)
    for seed in range(12):
        sample = synth.generate_sample(seed, task="count")
        found = []
        for k in range(len(sample.frames) // synth.FRAMES_PER_CHUNK):
            thumb = Image.fromarray(sample.frames[2 * k]).resize((28, 28), Image.BICUBIC)
            pixels = np.asarray(thumb, np.float64).reshape(-1, 3)  # (784, 3)
            distance = np.linalg.norm(pixels[:, None] - palette[None], axis=-1)  # (784, 7)
            found.append(int((distance.min(-1) < 40).sum() >= 10))  # 48-px card: 8×8 pixels
        assert found == [int(k in {c.chunk for c in sample.cards}) for k in range(8)], seed


def test_mixed_rows_keep_their_own_task_and_reproduce():
    samples = [synth.generate_sample(seed, task="mixed") for seed in range(6)]
    assert [s.task for s in samples] == ["main", "count"] * 3
    assert [s.problem_type for s in samples] == ["multiple_choice", "numeric"] * 3
    for s in samples:
        again = synth.generate_sample(s.seed, task=s.task)
        assert again.frames.tobytes() == s.frames.tobytes() and again.row("v") == s.row("v")


def test_token_labels_match_card_coverage_per_token():
    for seed in range(5):
        sample = synth.generate_sample(seed)
        colour_ids, label_ids = synth.token_labels(sample, factor=28)
        assert colour_ids.shape == label_ids.shape == (8, 6, 6)  # (K, H/f, W/f)
        expected_colour = np.zeros_like(colour_ids)
        for card in sample.cards:
            mask = np.zeros((168, 168))
            mask[card.top : card.top + card.size, card.left : card.left + card.size] = 1
            covered = mask.reshape(6, 28, 6, 28).mean((1, 3)) >= 0.5  # (6, 6)
            assert covered.any()
            expected_colour[card.chunk][covered] = 1 + synth.COLOUR_NAMES.index(card.colour)
            assert set(np.unique(label_ids[card.chunk])) == {0, 1 + card.label_index}
        np.testing.assert_array_equal(colour_ids, expected_colour)
        np.testing.assert_array_equal(colour_ids > 0, label_ids > 0)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"task": "nope"}, "unknown task"),
        ({"num_frames": 7}, "multiple of 2"),
        ({"num_frames": 4}, "at least 6"),
        ({"num_cards": 5}, "num_cards must be in [1, 4]"),
        ({"task": "count", "num_cards": 6}, "num_cards must be in [2, 5]"),
        ({"task": "count", "num_frames": 8}, "at least 10"),
        ({"size": 40}, "size must be even"),
        ({"card_px": 200}, "card_px must be in"),
        ({"fps": 0}, "fps must be in"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, fragment):
    with pytest.raises(ResAdaptError, match=fragment.replace("[", r"\[")):
        synth.generate_sample(0, **kwargs)


def test_cli_writes_decodable_videos_deterministically(tmp_path, capsys):
    out = tmp_path / "set"
    assert synth.main(["--out", str(out), "--num", "3", "--seed", "4"]) == 0
    rows = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert set(row) == {
            "video",
            "question",
            "answer",
            "options",
            "problem_type",
            "task",
            "seed",
            "evidence_frames",
        }
        with av.open(str(out / row["video"])) as container:
            decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        assert decoded.shape == (16, 168, 168, 3)  # (T, H, W, 3)
        sample = synth.generate_sample(row["seed"], task=row["task"])
        assert row == sample.row(row["video"])
        assert np.abs(decoded.astype(int) - sample.frames).mean() < 2.0
        card = sample.cards[sample.query]
        read = _grating_energies(_crop(decoded[card.frames[0]], card)).argmax()
        assert read == card.label_index, "the grating must survive H.264 coding"
    again = tmp_path / "again"
    assert synth.main(["--out", str(again), "--num", "3", "--seed", "4"]) == 0
    for name in ["data.jsonl"] + [row["video"] for row in rows]:
        assert filecmp.cmp(out / name, again / name, shallow=False), name


def test_cli_long_and_temporal_tasks(tmp_path):
    out = tmp_path / "long"
    args = ["--out", str(out), "--num", "1", "--task", "long", "--frames", "64", "--fps", "4"]
    assert synth.main(args) == 0
    row = json.loads((out / "data.jsonl").read_text())
    with av.open(str(out / row["video"])) as container:
        stream = container.streams.video[0]
        times = [float(frame.time) for frame in container.decode(stream)]
    assert len(times) == 64 and times[1] == pytest.approx(0.25)
    assert len(row["evidence_frames"]) == 2
    out = tmp_path / "mixed"
    assert synth.main(["--out", str(out), "--num", "6", "--task", "mixed", "--seed", "1"]) == 0
    rows = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert {row["task"] for row in rows} == {"main", "count"}
    assert all(row["video"].startswith("videos/mixed_") for row in rows)
    for row in rows:
        assert row == synth.generate_sample(row["seed"], task=row["task"]).row(row["video"])
    out = tmp_path / "temporal"
    assert synth.main(["--out", str(out), "--num", "2", "--task", "temporal"]) == 0
    rows = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert [row["problem_type"] for row in rows] == ["temporal_iou"] * 2


@pytest.mark.parametrize(
    "args",
    [
        ["--num", "0"],
        ["--num", "2", "--frames", "7"],
        ["--num", "2", "--seed", "-1"],
        ["--num", "2", "--num-cards", "9"],
        ["--num", "2", "--fps", "0"],
        ["--num", "2", "--crf", "99"],
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args):
    assert synth.main(["--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_argparse_errors_exit_2(tmp_path, capsys):
    assert synth.main(["--out", str(tmp_path), "--num", "2", "--task", "nope"]) == 2
    assert "error:" in capsys.readouterr().err


# ------------------------------------------------------------------------------- busy scenes
def _distractor_box(sample: synth.Sample, top: int, left: int) -> tuple[slice, slice]:
    side = synth.distractor_px(sample.cards[0].size)
    return slice(top, top + side), slice(left, left + side)


@pytest.mark.parametrize("task", ["main", "count", "long"])
def test_distractors_are_deterministic_and_the_sparse_clip_is_unchanged(task):
    busy, again = (synth.generate_sample(5, task=task, distractors=4) for _ in range(2))
    sparse = synth.generate_sample(5, task=task)
    assert busy.frames.tobytes() == again.frames.tobytes() and busy.distractors == again.distractors
    assert len(busy.distractors) == 4 and not sparse.distractors
    assert busy.cards == sparse.cards and busy.question == sparse.question
    assert busy.row("v") == sparse.row("v") | {"distractors": 4}
    assert "distractors" not in sparse.row("v")  # a sparse row is the row of before
    other = np.ones(busy.frames.shape[:3], bool)  # pixels outside every distractor box
    for top, left in busy.distractors:
        other[(slice(None), *_distractor_box(busy, top, left))] = False
    np.testing.assert_array_equal(busy.frames[other], sparse.frames[other])
    assert not np.array_equal(
        synth.generate_sample(6, task=task, distractors=4).frames, busy.frames
    )


def test_distractors_are_colourless_salient_never_over_a_card_and_in_every_frame():
    for seed in range(8):
        sample = synth.generate_sample(seed, distractors=4)
        card_pixels = _chroma(sample.frames) > CHROMA_CARD  # (T, H, W)
        for top, left in sample.distractors:
            box = _distractor_box(sample, top, left)
            for card in sample.cards:  # never over a card's box, in any frame
                rows = range(card.top, card.top + card.size)
                cols = range(card.left, card.left + card.size)
                assert not (set(rows) & set(range(box[0].start, box[0].stop)) and
                            set(cols) & set(range(box[1].start, box[1].stop)))  # fmt: skip
            crop = sample.frames[(slice(None), *box)]  # (T, s, s, 3) in every frame
            assert not card_pixels[(slice(None), *box)].any(), "a distractor has no colour"
            energies = np.stack([_grating_energies(frame) for frame in crop])  # (T, 4)
            full = _grating_energies(
                _crop(sample.frames[sample.cards[0].frames[0]], sample.cards[0])
            )
            assert energies.max(axis=1).min() > 0.5 * full.max()  # the cards' fine detail
            assert len(set(energies.argmax(axis=1).tolist())) == 1  # the same pattern throughout


def test_the_question_is_still_answerable_on_busy_clips():
    """The queried card is still the only patch of its colour in its chunk's tiny thumbnail, and
    its grating is still read at full size: distractors add clutter, never remove evidence."""
    for seed in range(20):
        sample = synth.generate_sample(seed, distractors=6)
        card = sample.cards[sample.query]
        frame = sample.frames[card.frames[0]]
        assert _grating_energies(_crop(frame, card)).argmax() == card.label_index
        target = np.asarray(synth.COLOURS[card.colour], np.float64)
        match = []
        for k in range(len(sample.frames) // synth.FRAMES_PER_CHUNK):
            thumb = np.asarray(Image.fromarray(sample.frames[2 * k]).resize((28, 28), Image.BOX))
            match.append(int((np.linalg.norm(thumb - target, axis=-1) < 40).sum()))
        assert int(np.argmax(match)) == card.chunk


def test_distractor_bounds_are_one_sentence(tmp_path, capsys):
    with pytest.raises(ResAdaptError, match=r"distractors must be in \[0, 16\]"):
        synth.generate_sample(0, distractors=17)
    args = ["--out", str(tmp_path / "x"), "--num", "1", "--distractors", "-1"]
    assert synth.main(args) == 2
    assert capsys.readouterr().err.startswith("error: distractors must be in")
    out = tmp_path / "busy"
    assert synth.main(["--out", str(out), "--num", "2", "--seed", "3", "--distractors", "2"]) == 0
    rows = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["distractors"] == 2
        again = synth.generate_sample(row["seed"], task=row["task"], distractors=2)
        assert row == again.row(row["video"])
