"""``python -m resadapt.eval``: every policy at the same budgets on one dataset, one frontier.

Owns running the evaluation grid (:mod:`resadapt.eval_config`: frame counts × policies × budgets)
and its per-example records, and the command; the summary rows (``results.json`` /
``results.csv``), the printed tables and ``frontier.png`` are :mod:`resadapt.report`'s. Knows
nothing about how a policy chooses scales, how budgets are fitted or how the backbone encodes
chunks.

Contract:
  * Each video is decoded once per frame count (examples are grouped by video; the decoded frames
    serve every policy and budget), then every policy answers from those same frames.
  * ``vanilla`` ignores budgets (one row per frame count, retention 1.0); every other policy gets
    one row per budget: a retention R in (0, 1] (``--budgets``) or an absolute visual-token cap
    (``--max-visual-tokens``). The budget is a hard ceiling per example.
  * An example whose budget cannot be met even at the smallest size for every chunk is recorded as
    ``over_budget`` and left out of that row (this depends on the video and frame count, not on the
    policy, so all policies at one budget see the same examples). Unreadable videos are recorded
    as ``unreadable``, more chunks than a policy accepts as ``too_many_chunks``, any other refused
    input as ``rejected`` (the status is the error's ``reason``); each is logged and counted and
    never stops the run.
  * Latency of an example = its allocation time (which includes the attention policy's probe
    pass) + its share of the backbone time, where the backbone time (resizing the chunks, the
    processor, the vision tower, prefill and greedy generation) of a micro-batch is divided evenly
    among its examples. Decoding is excluded (shared by all); the end-to-end time ``e2e_s`` adds
    the video's decode time (measured once per video and frame count) to it.
  * A block of ``--batch-size`` examples is answered in micro-batches of at most
    ``--max-batch-tokens`` prompt tokens (rows × longest row), so memory is bounded by that budget,
    not by the batch size or the frame count; the answers are those of the unbatched path.
  * A policy that runs its own probe pass of the backbone (``attention``) reports its visual tokens
    as ``probe_visual_tokens``; ``retention_with_probe`` = (visual_tokens + probe_visual_tokens) /
    vanilla, the cost of the answer including the probe (= retention for every other policy).
  * Accuracy = mean grade (resadapt.grading: 0/1, or temporal IoU) over the row's examples.

Outputs in ``--out``: ``records.jsonl`` (one line per example × policy × budget × frame count:
video, question, gold, response, correct, status, visual_tokens, retention, probe_visual_tokens,
retention_with_probe, latency_s, probe_s, scales, chunk_tokens, ...), ``results.json`` (config,
skip counts, rows), ``results.csv`` (the rows), ``frontier.png`` (accuracy against mean
retention, one line per policy, one panel per frame count) and, for rows of several tasks,
``frontier_<task>.png``. With ``--benchmark`` (``--data`` is
then that benchmark's own file, its videos under ``--video-root``) every row also carries
``benchmark``: the benchmark's headline ``score`` and the categories it reports
(resadapt.benchmark_readers.Breakdown), as extra columns of results.csv and a second printed table.
When the rows carry a ``task`` (the offline world's datasets do) and there are several, every row
also carries ``by_task``: the row's numbers (``report.TASK_COLUMNS``) over each task's examples
alone, as ``<task>_<column>`` columns of results.csv and a per-task printed table.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import resadapt.world  # noqa: F401 (an entry point: registers the tiny random backbones)
from resadapt import cli
from resadapt.benchmark_readers import format_breakdown
from resadapt.config import Request
from resadapt.data import Example, load_examples
from resadapt.engines import make_engine
from resadapt.errors import (
    PolicyError,
    ResAdaptError,
    VideoError,
)
from resadapt.eval_config import Budget, EvalConfig, PolicySpec
from resadapt.grading import grade
from resadapt.pipeline import (
    Allocation,
    Pipeline,
    check_remote,
    check_tokens,
    default_allocator_for,
    load_allocator,
    load_backbone,
)
from resadapt.policies import Learned, Policy, make_policy, policy_class
from resadapt.report import Summary, format_table, format_task_table, write_outputs
from resadapt.video import SampledVideo

logger = logging.getLogger("resadapt.eval")


# ---------------------------------------------------------------------------------------- running
@dataclass
class _Ready:
    """An example whose allocation fits: waiting for its batch's backbone call."""

    record: dict
    example: Example
    video: SampledVideo
    allocation: Allocation
    question: str


class Evaluator:
    """Runs the grid over examples with one loaded pipeline; yields one record per cell."""

    def __init__(
        self,
        config: EvalConfig,
        pipeline: Pipeline,
        learned: dict[str, Learned] | None = None,
    ):
        self.config = config
        self.pipeline = pipeline
        self.learned = learned or {}
        """Loaded allocators by PolicySpec.label."""
        self.decode_s: dict[str, float] = {}
        """Seconds the latest decode of each video took (shared by every policy and budget)."""

    def policy(self, spec: PolicySpec, index: int) -> Policy:
        """The policy for example ``index``; ``random`` draws from (seed, index)."""
        seed = int(np.random.SeedSequence([self.config.seed, index]).generate_state(1)[0])
        return make_policy(
            spec.name,
            scale=self.config.scale,
            seed=seed,
            learned=self.learned.get(spec.label),
            probe_budget=self.config.probe_budget,
            probe_layers=self.config.probe_layers,
            contextual_share=self.config.contextual_share,
            select_sizes=self.config.select_sizes,
        )

    def run(self, examples: list[Example]) -> Iterator[dict]:
        """Records for every frame count × example × (policy, budget); see the module contract.

        Examples are grouped by video (first-appearance order) and taken ``batch_size`` at a time;
        a block's videos are decoded once and kept until no later example needs them.
        """
        indexed = list(enumerate(examples))
        first_seen: dict[str, int] = {}
        for i, e in indexed:
            first_seen.setdefault(e.video, i)
        indexed.sort(key=lambda ie: (first_seen[ie[1].video], ie[0]))
        size = self.config.batch_size
        blocks = [indexed[i : i + size] for i in range(0, len(indexed), size)]
        for frames in self.config.frame_counts:
            cache: dict[str, SampledVideo | ResAdaptError] = {}
            for n, block in enumerate(blocks):
                needed = {e.video for _, e in block}
                cache = {path: v for path, v in cache.items() if path in needed}
                for _, e in block:
                    if e.video not in cache:
                        start = time.perf_counter()
                        cache[e.video] = self._decode(e, frames)
                        self.decode_s[e.video] = time.perf_counter() - start
                logger.info(
                    "frames %s: block %d/%d (%d examples)",
                    self.config.frames_label(frames), n + 1, len(blocks), len(block),
                )  # fmt: skip
                for spec, budget in self.config.settings():
                    yield from self._answer(block, cache, spec, budget, frames)

    def _request(self, e: Example, spec: PolicySpec, budget: Budget, frames: int | None):
        return Request(
            question=e.prompt(),
            policy=spec.name,
            scale=self.config.scale,
            budget=budget.retention,
            max_visual_tokens=budget.max_visual_tokens,
            num_frames=frames,
            fps=self.config.fps,
            max_new_tokens=self.config.max_new_tokens,
            seed=self.config.seed,
            probe_budget=self.config.probe_budget,
            probe_layers=self.config.probe_layers,
            contextual_share=self.config.contextual_share,
            encode_budget=spec.encode_budget,
            select_sizes=self.config.select_sizes,
        )

    def _decode(self, e: Example, frames: int | None) -> SampledVideo | ResAdaptError:
        """The sampled video, or the error that says why it cannot be used (logged)."""
        request = Request(question=e.prompt(), num_frames=frames, fps=self.config.fps)
        try:
            return self.pipeline.decode(e.video, request)
        except ResAdaptError as err:
            logger.warning("skipping a video (%s): %s", err.reason, err)
            return err

    def _answer(
        self,
        block: list[tuple[int, Example]],
        cache: dict[str, SampledVideo | ResAdaptError],
        spec: PolicySpec,
        budget: Budget,
        frames: int | None,
    ) -> Iterator[dict]:
        """Allocate every example of the block, answer the ones that fit in one batch, grade."""
        ready: list[_Ready] = []
        for index, e in block:
            record = {
                "frames": self.config.frames_label(frames),
                "policy": spec.label,
                "budget": budget.retention,
                "max_visual_tokens": budget.max_visual_tokens,
                "video": e.video,
                "question": e.question,
                "problem_type": e.problem_type,
                "gold": e.gold(),
                "category": e.extra.get("category"),
                "task": e.extra.get("task"),
            }
            video = cache[e.video]
            if isinstance(video, ResAdaptError):
                yield record | {"status": video.reason, "error": str(video)}
                continue
            request = self._request(e, spec, budget, frames)
            start = time.perf_counter()
            try:
                allocation = self.pipeline.allocate(video, request, self.policy(spec, index))
            except ResAdaptError as err:
                yield record | {"status": err.reason, "error": str(err)}
                continue
            record["allocate_s"] = time.perf_counter() - start
            ready.append(_Ready(record, e, video, allocation, request.question))
        if not ready:
            return
        backbone = self.pipeline.backbone
        chunked = [self.pipeline.chunked(r.video, r.allocation) for r in ready]
        start = time.perf_counter()  # a micro-batch's time includes its preparation
        if self.pipeline.engine is not None:  # --engine vllm: the server batches the requests
            yield from self._served(ready, chunked, start)
            return
        for index, inputs in backbone.batches(chunked, [r.question for r in ready]):
            produced = backbone.chunk_tokens(inputs)
            encoded = [t for b in index for t in ready[b].allocation.tokens if t]
            assert produced == encoded, "tokens"
            tower = time.perf_counter()
            inputs = self.pipeline.encode(inputs, [ready[b].allocation for b in index])
            prunes = policy_class(spec.name).operator.prunes
            tower_s = (time.perf_counter() - tower) / len(index) if prunes else 0.0
            responses = backbone.generate(inputs, self.config.max_new_tokens)
            backbone_s = (time.perf_counter() - start) / len(index)
            yield from self._graded([ready[b] for b in index], responses, backbone_s, tower_s)
            start = time.perf_counter()

    def _served(self, ready: list[_Ready], chunked: list, start: float) -> Iterator[dict]:
        """Records of ``ready`` answered by the vLLM engine, all requests in flight at once."""
        for r in ready:
            check_remote(r.allocation)
        replies = self.pipeline.engine.generate_many(
            chunked, [r.question for r in ready], self.config.max_new_tokens
        )
        for r, reply in zip(ready, replies, strict=True):
            check_tokens(reply.visual_tokens, r.allocation)
        backbone_s = (time.perf_counter() - start) / len(ready)
        yield from self._graded(ready, [reply.text for reply in replies], backbone_s, 0.0)

    def _graded(
        self, ready: list[_Ready], responses: list[str], backbone_s: float, tower_s: float
    ) -> Iterator[dict]:
        """The records of answered examples, graded; ``backbone_s`` (which includes ``tower_s``,
        the pruning policy's separate vision-tower pass) is each one's share."""
        for r, response in zip(ready, responses, strict=True):
            e = r.example
            tokens = r.allocation.visual_tokens
            probe_tokens = r.allocation.probe_visual_tokens
            vanilla = r.allocation.vanilla_tokens
            yield r.record | {
                "status": "ok",
                "response": response,
                "correct": grade(e.problem_type, response, e.gold(), len(e.options or [])),
                "num_frames": len(r.video.frames),
                "visual_tokens": tokens,
                "encoded_visual_tokens": r.allocation.encoded_tokens,
                "vanilla_visual_tokens": int(r.allocation.vanilla_tokens),
                "retention": tokens / vanilla,
                "probe_visual_tokens": probe_tokens,
                "retention_with_probe": (tokens + probe_tokens) / vanilla,
                "probe_s": r.allocation.probe_s,
                "latency_s": r.record["allocate_s"] + backbone_s,
                "decode_s": self.decode_s.get(e.video, 0.0),
                "e2e_s": self.decode_s.get(e.video, 0.0) + r.record["allocate_s"] + backbone_s,
                "backbone_s": backbone_s,
                "tower_s": tower_s,
                "scales": [round(float(s), 4) for s in r.allocation.scales],
                "chunk_tokens": [int(t) for t in r.allocation.chunk_tokens],
            }


# ---------------------------------------------------------------------------------------- entry
def load(config: EvalConfig) -> tuple[Pipeline, dict[str, Learned], str]:
    """Load the backbone and the engine once, and every allocator the policies name; returns the
    backbone name."""
    backbone = load_backbone(config)
    learned, by_path = {}, {}
    for spec in config.policies:
        if not policy_class(spec.name).needs_allocator:
            continue
        path = spec.allocator or default_allocator_for(config, backbone)
        if path is None:
            raise PolicyError(
                f"{spec.name} needs an allocator trained against {backbone.name}: write "
                f"{spec.name}:PATH in --policies"
            )
        if path not in by_path:  # one allocator serves each of its combinations
            allow = config.allow_mismatched_allocator
            by_path[path] = load_allocator(path, backbone, allow_mismatched=allow)
        learned[spec.label] = by_path[path]
    return Pipeline(backbone, engine=make_engine(config, backbone)), learned, backbone.name


def evaluate(config: EvalConfig) -> list[dict]:
    """Run the whole evaluation and write every output; returns the summary rows."""
    examples, skipped = load_examples(
        config.data, config.limit, config.benchmark, config.video_root
    )
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResAdaptError(f"cannot create the output folder {out}: {e.strerror}") from e
    pipeline, learned, name = load(config)
    tasks = tuple(
        sorted({e.extra["task"] for e in examples if isinstance(e.extra.get("task"), str)})
    )
    summary = Summary(config, tasks)
    start = time.perf_counter()
    with (out / "records.jsonl").open("w") as records:
        for record in Evaluator(config, pipeline, learned).run(examples):
            summary.add(record)
            records.write(json.dumps(record) + "\n")
    rows = summary.rows()
    if not any(r["examples"] for r in rows):
        raise VideoError(f"no example of {config.data} could be evaluated (see the warnings)")
    unreadable = max((r["unreadable"] for r in rows), default=0)
    if unreadable:
        logger.warning("%d example(s) skipped: unreadable video", unreadable)
    over: Counter = Counter()
    for r in rows:
        label = f"{Budget(r['budget'], r['max_visual_tokens']).label} @ {r['frames']} frames"
        over[label] = max(over[label], r["over_budget"])
    if any(over.values()):
        logger.warning(
            "examples over budget (at the smallest sizes; keyframes: below one full-resolution "
            "chunk), left out: %s",
            dict(+over),
        )
    for reason in ("too_many_chunks", "rejected"):
        left_out = max((r[reason] for r in rows), default=0)
        if left_out:
            logger.warning("%d example(s) left out of a row: %s", left_out, reason)
    logger.info("evaluated %d examples in %.1f s", len(examples), time.perf_counter() - start)
    write_outputs(out, config, name, rows, skipped)
    return rows


def main(argv: list[str] | None = None) -> int:
    def body() -> None:
        args = cli.parse(
            argv,
            EvalConfig,
            prog="python -m resadapt.eval",
            description="Evaluate allocation policies at the same visual-token budgets: "
            "accuracy, retention, tokens and latency per policy × budget × frame count.",
        )
        cli.setup_logging()
        logger.setLevel(logging.INFO)
        config = cli.make(EvalConfig, args)
        rows = evaluate(config)
        print(format_table(rows))
        if config.benchmark is not None:
            print(f"\n{config.benchmark}: score and reported categories per row")
            print(format_breakdown(rows))
        if any("by_task" in r for r in rows):
            print("\nper task")
            print(format_task_table(rows))
        print(f"\nwrote results.json, results.csv, records.jsonl and frontier.png to {config.out}")

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
