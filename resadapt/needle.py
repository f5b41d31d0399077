"""The needle test: which layers and heads of a checkpoint find the object a question names, as
FlexSelect finds its reference layer; ``python -m resadapt.needle --backbone B [--out F]`` runs it
and writes the choice (resadapt.heads) beside the checkpoint.

Owns the test: clips with one question-named card at a known chunk, from a registered needle source
(the offline world registers its generator in resadapt.registry); every layer × head × query-row
group votes for the chunk its attention ranks first; the best are kept. Knows nothing about how
clips are made or what a policy does with the heads.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

import resadapt.world  # noqa: F401 (an entry point: registers the world's needle clips)
from resadapt import cli
from resadapt.backbone import Backbone, weights_fingerprint
from resadapt.cli import check_field, option
from resadapt.config import Request
from resadapt.data import load_examples
from resadapt.errors import ResAdaptError
from resadapt.heads import ROW_GROUPS, NeedleChoice, needle_path, save
from resadapt.pipeline import Pipeline
from resadapt.probe import model_depth, probe_features
from resadapt.registry import needle_source, needle_sources

logger = logging.getLogger(__name__)

KEEP_WITHIN = 0.05
"""Heads whose hit rate is within this of the best are kept (at most ``MAX_HEADS``)."""
MAX_HEADS = 4
NEEDLE_CLIPS = 32
NEEDLE_FRAMES = 16
NEEDLE_SIZE = 168
NEEDLE_BUDGET = 0.25
"""The test's defaults: clips, frames per clip, frame side, probe tokens (share of full size)."""


def rank_heads(
    backbone: Backbone,
    clips: list[tuple[object, str, int]],
    probe_budget: float = NEEDLE_BUDGET,
) -> tuple[np.ndarray, float]:
    """Hit rates (A,) of every probe feature — how often its top chunk is the needle's — over
    ``clips`` (decoded video, question, needle chunk), through every layer; and the hit rate of
    the mean of all layers and heads of the rows after the video."""
    fpc = backbone.geometry.frames_per_chunk
    depth = model_depth(backbone)
    hits, mean_hits = None, 0
    for video, question, chunk in clips:
        f = probe_features(
            backbone, video, question, fpc, probe_budget=probe_budget, num_layers=depth
        )
        top = f.attention.argmax(dim=0).numpy()  # (A,)
        hits = (top == chunk).astype(float) + (0 if hits is None else hits)
        a = f.attention.shape[1] // 2
        mean_hits += int(int(f.attention[:, :a].mean(dim=1).argmax()) == chunk)
    assert hits is not None, "the needle test needs clips"
    return hits / len(clips), mean_hits / len(clips)


def choose(rates: np.ndarray, layers: int, heads: int) -> list[list]:
    """The best heads: within ``KEEP_WITHIN`` of the best hit rate, at most ``MAX_HEADS``."""
    order = np.argsort(-rates, kind="stable")
    best = float(rates[order[0]])
    chosen = []
    for c in order[:MAX_HEADS]:
        if rates[c] < best - KEEP_WITHIN:
            break
        row, rest = divmod(int(c), layers * heads)
        layer, head = divmod(rest, heads)
        chosen.append([ROW_GROUPS[row], layer, head, round(float(rates[c]), 4)])
    return chosen


def find_heads(
    backbone: Backbone,
    *,
    source: str = "synth",
    clips: int = NEEDLE_CLIPS,
    num_frames: int = NEEDLE_FRAMES,
    size: int = NEEDLE_SIZE,
    seed: int = 7,
    probe_budget: float = NEEDLE_BUDGET,
) -> NeedleChoice:
    """Run the needle test on ``clips`` clips written by the needle source ``source``."""
    write = needle_source(source)
    if write is None:
        raise ResAdaptError(
            f"no needle source named {source!r} is registered (registered: "
            f"{', '.join(needle_sources()) or 'none'}); run through an entry point that loads the "
            "offline world, e.g. python -m resadapt.needle"
        )
    pipeline = Pipeline(backbone)
    with tempfile.TemporaryDirectory() as tmp:
        rows = write(Path(tmp), clips, seed, num_frames, size)
        examples, _ = load_examples(rows)
        decoded = []
        fpc = backbone.geometry.frames_per_chunk
        for ex in examples:
            request = Request(question=ex.prompt(), num_frames=num_frames)
            chunk = int(ex.extra["evidence_frames"][0]) // fpc
            decoded.append((pipeline.decode(ex.video, request), ex.prompt(), chunk))
        rates, mean_rate = rank_heads(backbone, decoded, probe_budget)
    text = backbone.model.config.text_config
    return NeedleChoice(
        backbone=backbone.name,
        weights_sha256=weights_fingerprint(backbone),
        heads=choose(rates, model_depth(backbone), int(text.num_attention_heads)),
        clips=len(decoded),
        num_frames=num_frames,
        size=size,
        probe_budget=probe_budget,
        all_mean_hit_rate=round(mean_rate, 4),
    )


@dataclass
class NeedleConfig:
    """The flags of ``python -m resadapt.needle``."""

    backbone: str = option("checkpoint: a local folder, a hub id or a registered name", "")
    out: str | None = option("where to write the JSON; none: beside the checkpoint", None)
    clips: int = option("needle clips", NEEDLE_CLIPS)
    num_frames: int = option("frames per clip (whole chunks)", NEEDLE_FRAMES)
    size: int = option("frame side in pixels", NEEDLE_SIZE)
    probe_budget: float = option("probe tokens, share of the full-resolution tokens", NEEDLE_BUDGET)
    seed: int = option("seed of the needle clips", 7)

    def __post_init__(self) -> None:
        check = partial(check_field, self)
        check("backbone", bool(self.backbone), "must name a checkpoint")
        check("clips", self.clips >= 1, "must be at least 1")
        check("num_frames", self.num_frames >= 2, "must be at least 2 (one chunk)")
        check("size", self.size >= 28, "must be at least 28 pixels")
        check("probe_budget", 0 < self.probe_budget <= 1, "must be in (0, 1]")


def main(argv: list[str] | None = None) -> int:
    """``python -m resadapt.needle --backbone B [--out F]``: run the test, write the choice."""

    def body() -> None:
        args = cli.parse(
            argv,
            NeedleConfig,
            prog="python -m resadapt.needle",
            description=__doc__.splitlines()[0],
        )
        cli.setup_logging(logging.INFO)
        config = cli.make(NeedleConfig, args)
        backbone = Backbone.load(config.backbone)
        options = {k: v for k, v in asdict(config).items() if k not in ("backbone", "out")}
        choice = find_heads(backbone, **options)  # clips, frames, size, seed, probe budget
        path = save(choice, config.out or needle_path(config.backbone))
        logger.info("%s; written to %s", choice.describe(), path)

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
