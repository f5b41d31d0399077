"""``python -m resadapt.eval``: every policy at the same budgets on one dataset, one frontier.

Owns the evaluation grid (frame counts × policies × budgets), its per-example records, the summary
rows (``results.json`` / ``results.csv``), the printed table and ``frontier.png``. Knows nothing
about how a policy chooses scales, how budgets are fitted or how the backbone encodes chunks.

Contract:
  * Each video is decoded once per frame count (examples are grouped by video; the decoded frames
    serve every policy and budget), then every policy answers from those same frames.
  * ``vanilla`` ignores budgets (one row per frame count, retention 1.0); every other policy gets
    one row per budget: a retention R in (0, 1] (``--budgets``) or an absolute visual-token cap
    (``--max-visual-tokens``). The budget is a hard ceiling per example.
  * An example whose budget cannot be met even at the smallest size for every chunk is recorded as
    ``over_budget`` and left out of that row (this depends on the video and frame count, not on the
    policy, so all policies at one budget see the same examples). Unreadable videos are recorded
    as ``unreadable``, logged and counted; they never stop the run.
  * Latency of an example = its allocation time (which includes the attention policy's probe
    pass) + its share of the backbone time, where the backbone time (resizing the chunks, the
    processor, prefill and greedy generation) of a batch of ``--batch-size`` examples is divided
    evenly among them. Decoding is excluded (shared by all).
  * A policy that runs its own probe pass of the backbone (``attention``) reports its visual tokens
    as ``probe_visual_tokens``; ``retention_with_probe`` = (visual_tokens + probe_visual_tokens) /
    vanilla, the cost of the answer including the probe (= retention for every other policy).
  * Accuracy = mean grade (resadapt.grading: 0/1, or temporal IoU) over the row's examples.

Outputs in ``--out``: ``records.jsonl`` (one line per example × policy × budget × frame count:
video, question, gold, response, correct, status, visual_tokens, retention, probe_visual_tokens,
retention_with_probe, latency_s, probe_s, scales, chunk_tokens, ...), ``results.json`` (config,
skip counts, rows), ``results.csv`` (the rows) and ``frontier.png`` (accuracy against mean
retention, one line per policy, one panel per frame count). With ``--benchmark`` (``--data`` is
then that benchmark's own file, its videos under ``--video-root``) every row also carries
``benchmark``: the benchmark's headline ``score`` and the categories it reports
(resadapt.benchmarks.Breakdown), as extra columns of results.csv and a second printed table.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from resadapt import cli
from resadapt.benchmarks import BENCHMARK_NAMES, Breakdown, format_breakdown
from resadapt.cli import default_of, option
from resadapt.data import Example, load_examples
from resadapt.errors import (
    BudgetError,
    PolicyError,
    ResAdaptError,
    VideoError,
)
from resadapt.grading import grade
from resadapt.pipeline import (
    Allocation,
    ModelConfig,
    Pipeline,
    Request,
    default_allocator_for,
    load_allocator,
    load_backbone,
)
from resadapt.policies import POLICY_NAMES, Learned, Policy, check_allocator_path, make_policy
from resadapt.video import MAX_SAMPLED_FRAMES, SampledVideo

logger = logging.getLogger("resadapt.eval")

DEFAULT_BUDGETS = (0.1, 0.25, 0.5)
"""Retention budgets evaluated when neither --budgets nor --max-visual-tokens is given."""
MAX_BATCH_SIZE = 256
"""Most examples answered in one backbone batch."""
ROW_COLUMNS = (
    "policy",
    "budget",
    "max_visual_tokens",
    "frames",
    "examples",
    "over_budget",
    "unreadable",
    "accuracy",
    "mean_retention",
    "mean_probe_visual_tokens",
    "mean_retention_with_probe",
    "mean_visual_tokens",
    "mean_scale_spread",
    "mean_latency_s",
)
"""Columns of results.csv (and keys of every row in results.json); means are empty (null) when
no example of the row fits its budget. The scale spread is the within-video standard deviation of
the fitted chunk scales (0: every chunk the same size); the probe columns are 0 and equal to the
retention for policies without a probe pass."""
MARKERS = "osD^vPX"
"""Marker of each policy's line in frontier.png (vanilla is a star)."""


# ---------------------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class PolicySpec:
    """One entry of ``--policies``: a policy name, and the allocator folder for ``learned``."""

    name: str
    allocator: str | None = None
    label: str = ""
    """Name in rows and plots: the policy name, or ``learned:PATH`` when several are compared."""


@dataclass(frozen=True)
class Budget:
    """One budget point: a retention, an absolute token cap, or neither (vanilla)."""

    retention: float | None = None
    max_visual_tokens: int | None = None

    @property
    def label(self) -> str:
        if self.retention is not None:
            return f"{self.retention:g}"
        if self.max_visual_tokens is not None:
            return f"{self.max_visual_tokens} tokens"
        return "-"


def parse_policies(text: str) -> tuple[PolicySpec, ...]:
    """``vanilla,uniform,learned:PATH`` → specs; raises PolicyError naming a bad entry."""
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        raise PolicyError(f"--policies lists no policy; choose from {', '.join(POLICY_NAMES)}")
    parsed = []
    for entry in entries:
        name, _, path = entry.partition(":")
        if name not in POLICY_NAMES:
            raise PolicyError(
                f"unknown policy {name!r} in --policies; choose from {', '.join(POLICY_NAMES)}"
            )
        if path and name != "learned":
            raise PolicyError(f"only learned takes an allocator path (learned:PATH), got {entry!r}")
        parsed.append((name, path or None))
    if len(set(parsed)) < len(parsed):
        raise PolicyError(f"--policies lists a policy twice: {text!r}")
    several_learned = sum(name == "learned" for name, _ in parsed) > 1
    return tuple(
        PolicySpec(name, path, f"{name}:{path}" if path and several_learned else name)
        for name, path in parsed
    )


def _budgets(text: str) -> tuple[float | None, ...]:
    """``--budgets``: retentions, and ``none`` for the policy's own allocation (no cap)."""
    values: list[float | None] = []
    for item in (s.strip() for s in text.split(",")):
        try:
            values.append(None if item.lower() == "none" else float(item))
        except ValueError as e:
            raise BudgetError(f"--budgets takes comma-separated numbers, got {item!r}") from e
    return tuple(values)


def _unique(values: tuple) -> tuple:
    """``values`` in order, repeats dropped."""
    return tuple(dict.fromkeys(values))


@dataclass(kw_only=True)
class EvalConfig(ModelConfig):
    """The evaluation grid and run settings, and the models (every field is a CLI flag)."""

    data: str = option(
        "dataset: .jsonl or .parquet rows (see resadapt.data), or the --benchmark's own file "
        "(MVBench: its json folder)"
    )
    benchmark: str | None = option(
        "read --data as this benchmark's published file and report its categories "
        "(see resadapt.benchmarks)",
        None,
        choices=BENCHMARK_NAMES,
    )
    video_root: str | None = option(
        "folder of the --benchmark's videos (default: the folder of --data)", None
    )
    out: str = option("output folder for results.json/.csv, records.jsonl and frontier.png")
    policies: tuple[PolicySpec, ...] = option(
        "comma list of vanilla, uniform, content, random, attention, learned[:PATH] (learned "
        "without a path uses --allocator: $RESADAPT_ALLOCATOR, else the bundled allocator when it "
        "matches the backbone)",
        parse_policies("vanilla,uniform,content,random"),
        parse=parse_policies,
    )
    budgets: tuple[float | None, ...] = option(
        "comma list of retention budgets in (0, 1], and none for each policy's own allocation "
        "without a cap (default: 0.1,0.25,0.5 unless --max-visual-tokens is given)",
        (),
        parse=_budgets,
    )
    max_visual_tokens: tuple[int, ...] = option(
        "comma list of absolute visual-token caps, evaluated as extra budget points", ()
    )
    frames: tuple[int, ...] = option(
        "comma list of frame counts; each is decoded once per video and evaluated "
        "(default: sample by --fps)",
        (),
    )
    fps: float = option(
        "frames sampled per second when --frames is not given", default_of(Request, "fps")
    )
    limit: int | None = option("evaluate only the first N valid rows", None)
    batch_size: int = option("examples of one policy × budget answered in one backbone batch", 8)
    max_new_tokens: int = option("longest answer, in tokens", default_of(Request, "max_new_tokens"))
    seed: int = option(
        "seed of the random policy (each example draws from (seed, its index))",
        default_of(Request, "seed"),
    )
    scale: float = option(
        "scale of the uniform policy before budget fitting", default_of(Request, "scale")
    )
    probe_budget: float = option(
        "visual tokens of the attention policy's probe pass, as a share of the full-resolution "
        "tokens",
        default_of(Request, "probe_budget"),
    )
    probe_layers: int | None = option(
        "language-model layers of the attention policy's probe pass (none: all)",
        default_of(Request, "probe_layers"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.budgets = _unique(self.budgets)
        self.max_visual_tokens = _unique(self.max_visual_tokens)
        self.frames = _unique(self.frames)
        if not self.budgets and not self.max_visual_tokens:
            self.budgets = DEFAULT_BUDGETS
        for r in self.budgets:
            if r is not None and not 0 < r <= 1:
                raise BudgetError(f"--budgets: a retention must be in (0, 1], got {r:g}")
        for n in self.max_visual_tokens:
            if n <= 0:
                raise BudgetError(f"--max-visual-tokens: a cap must be positive, got {n}")
        for n in self.frames:
            if not 1 <= n <= MAX_SAMPLED_FRAMES:
                raise BudgetError(
                    f"--frames: a count must be in [1, {MAX_SAMPLED_FRAMES}], got {n}"
                )
        if self.video_root is not None and self.benchmark is None:
            raise ResAdaptError(f"--video-root {self.video_root} needs --benchmark")
        if self.limit is not None and self.limit < 1:
            raise BudgetError(f"--limit must be at least 1, got {self.limit}")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise BudgetError(
                f"--batch-size must be in [1, {MAX_BATCH_SIZE}], got {self.batch_size}"
            )
        # fps, max_new_tokens and scale are checked where they are used (Request, make_policy);
        # building one request here turns a bad value into an error before anything loads.
        Request(
            question="?",
            fps=self.fps,
            max_new_tokens=self.max_new_tokens,
            probe_budget=self.probe_budget,
            probe_layers=self.probe_layers,
        )
        if not 0 < self.scale <= 1:
            raise BudgetError(f"--scale must be in (0, 1], got {self.scale}")
        for spec in self.policies:
            if spec.allocator:
                check_allocator_path(spec.allocator)

    @property
    def budget_points(self) -> tuple[Budget, ...]:
        """Retention budgets first, then token caps, in the order given."""
        return tuple(Budget(retention=r) for r in self.budgets) + tuple(
            Budget(max_visual_tokens=n) for n in self.max_visual_tokens
        )

    @property
    def frame_counts(self) -> tuple[int | None, ...]:
        """Requested frame counts; (None,) means sampling by ``fps``."""
        return self.frames or (None,)

    def frames_label(self, frames: int | None) -> int | str:
        """What rows carry as ``frames``: the count, or e.g. ``"2 fps"``."""
        return frames if frames is not None else f"{self.fps:g} fps"

    def settings(self) -> list[tuple[PolicySpec, Budget]]:
        """The (policy, budget) grid of one frame count: vanilla once, others at every budget."""
        grid = []
        for spec in self.policies:
            points = (Budget(),) if spec.name == "vanilla" else self.budget_points
            grid += [(spec, b) for b in points]
        return grid

    def to_json(self) -> dict:
        values = asdict(self)
        values["policies"] = [
            f"{p.name}:{p.allocator}" if p.allocator else p.name for p in self.policies
        ]
        return values


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
            cache: dict[str, SampledVideo | str] = {}
            for n, block in enumerate(blocks):
                needed = {e.video for _, e in block}
                cache = {path: v for path, v in cache.items() if path in needed}
                for _, e in block:
                    if e.video not in cache:
                        cache[e.video] = self._decode(e, frames)
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
        )

    def _decode(self, e: Example, frames: int | None) -> SampledVideo | str:
        """The sampled video, or the one-sentence reason it cannot be read (logged)."""
        request = Request(question=e.prompt(), num_frames=frames, fps=self.config.fps)
        try:
            return self.pipeline.decode(e.video, request)
        except VideoError as err:
            logger.warning("skipping unreadable video: %s", err)
            return str(err)

    def _answer(
        self,
        block: list[tuple[int, Example]],
        cache: dict[str, SampledVideo | str],
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
            }
            video = cache[e.video]
            if isinstance(video, str):
                yield record | {"status": "unreadable", "error": video}
                continue
            request = self._request(e, spec, budget, frames)
            start = time.perf_counter()
            try:
                allocation = self.pipeline.allocate(video, request, self.policy(spec, index))
            except BudgetError as err:
                yield record | {"status": "over_budget", "error": str(err)}
                continue
            record["allocate_s"] = time.perf_counter() - start
            ready.append(_Ready(record, e, video, allocation, request.question))
        if not ready:
            return
        start = time.perf_counter()
        backbone = self.pipeline.backbone
        chunked = [self.pipeline.chunked(r.video, r.allocation) for r in ready]
        inputs = backbone.prepare(chunked, [r.question for r in ready])
        produced = backbone.chunk_tokens(inputs)
        assert produced == [t for r in ready for t in r.allocation.tokens], "token mismatch"
        responses = backbone.generate(inputs, self.config.max_new_tokens)
        backbone_s = (time.perf_counter() - start) / len(ready)
        for r, response in zip(ready, responses, strict=True):
            e = r.example
            tokens = int(sum(r.allocation.tokens))
            probe_tokens = r.allocation.probe_visual_tokens
            vanilla = r.allocation.vanilla_tokens
            yield r.record | {
                "status": "ok",
                "response": response,
                "correct": grade(e.problem_type, response, e.gold(), len(e.options or [])),
                "num_frames": len(r.video.frames),
                "visual_tokens": tokens,
                "vanilla_visual_tokens": int(r.allocation.vanilla_tokens),
                "retention": tokens / vanilla,
                "probe_visual_tokens": probe_tokens,
                "retention_with_probe": (tokens + probe_tokens) / vanilla,
                "probe_s": r.allocation.probe_s,
                "latency_s": r.record["allocate_s"] + backbone_s,
                "backbone_s": backbone_s,
                "scales": [round(float(s), 4) for s in r.allocation.scales],
                "chunk_tokens": [int(t) for t in r.allocation.tokens],
            }


# ---------------------------------------------------------------------------------------- summary
class Summary:
    """Running totals per (frames, policy, budget) cell; ``rows()`` in grid order."""

    def __init__(self, config: EvalConfig):
        self.config = config
        self.cells: dict[tuple, Counter] = {}
        self.breakdowns: dict[tuple, Breakdown] = {}
        """Per-category totals of each cell when --benchmark is given."""
        for frames in config.frame_counts:
            for spec, budget in config.settings():
                label = config.frames_label(frames)
                key = (label, spec.label, budget.retention, budget.max_visual_tokens)
                self.cells[key] = Counter()
                if config.benchmark is not None:
                    self.breakdowns[key] = Breakdown(config.benchmark)

    def add(self, record: dict) -> None:
        key = (record["frames"], record["policy"], record["budget"], record["max_visual_tokens"])
        cell = self.cells[key]
        if key in self.breakdowns:
            self.breakdowns[key].add(record)
        cell[record["status"]] += 1
        if record["status"] == "ok":
            cell["correct"] += record["correct"]
            cell["retention"] += record["retention"]
            cell["probe_visual_tokens"] += record["probe_visual_tokens"]
            cell["retention_with_probe"] += record["retention_with_probe"]
            cell["visual_tokens"] += record["visual_tokens"]
            cell["scale_spread"] += float(np.std(record["scales"]))
            cell["latency_s"] += record["latency_s"]

    def rows(self) -> list[dict]:
        rows = []
        for (frames, policy, budget, cap), cell in self.cells.items():
            n = cell["ok"]

            def mean(key: str, n: int = n, cell: Counter = cell) -> float | None:
                return cell[key] / n if n else None  # None: no example fitted this budget

            rows.append(
                {
                    "policy": policy,
                    "budget": budget,
                    "max_visual_tokens": cap,
                    "frames": frames,
                    "examples": n,
                    "over_budget": cell["over_budget"],
                    "unreadable": cell["unreadable"],
                    "accuracy": mean("correct"),
                    "mean_retention": mean("retention"),
                    "mean_probe_visual_tokens": mean("probe_visual_tokens"),
                    "mean_retention_with_probe": mean("retention_with_probe"),
                    "mean_visual_tokens": mean("visual_tokens"),
                    "mean_scale_spread": mean("scale_spread"),
                    "mean_latency_s": mean("latency_s"),
                }
            )
            if self.breakdowns:
                rows[-1]["benchmark"] = self.breakdowns[(frames, policy, budget, cap)].columns()
        return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a compact fixed-width table (one line per policy × budget × frame count)."""
    head = (
        f"{'policy':<12} {'budget':>10} {'frames':>6} {'n':>4} {'accuracy':>8} "
        f"{'retention':>9} {'+probe':>7} {'tokens':>8} {'spread':>6} {'latency':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        budget = Budget(r["budget"], r["max_visual_tokens"]).label
        line = f"{r['policy']:<12} {budget:>10} {r['frames']!s:>6} {r['examples']:>4} "
        if r["examples"]:
            line += (
                f"{r['accuracy']:>8.3f} {r['mean_retention']:>9.3f} "
                f"{r['mean_retention_with_probe']:>7.3f} {r['mean_visual_tokens']:>8.1f} "
                f"{r['mean_scale_spread']:>6.3f} {r['mean_latency_s']:>7.3f}s"
            )
        else:
            line += f"{'-':>8} {'-':>9} {'-':>7} {'-':>8} {'-':>6} {'-':>8}"
        lines.append(line)
    lines.append("+probe: retention counting the attention policy's probe pass")
    if any(not r["examples"] for r in rows):
        lines.append("n = 0: no example fits that budget even at the smallest size per chunk")
    return "\n".join(lines)


def plot_frontier(rows: list[dict], path: Path, title: str) -> None:
    """Accuracy (y) against mean retention (x): one line per policy, one panel per frame count.

    Vanilla is a single marker at its retention (1.0). Rows without examples are not drawn.
    """
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state

    frame_labels = list(dict.fromkeys(r["frames"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig = Figure(figsize=(5.5 * len(frame_labels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(frame_labels), squeeze=False)[0]
    for ax, frames in zip(axes, frame_labels, strict=True):
        for i, policy in enumerate(policies):
            points = sorted(
                (r["mean_retention"], r["accuracy"])
                for r in rows
                if r["frames"] == frames and r["policy"] == policy and r["examples"]
            )
            if not points:
                continue
            x, y = zip(*points, strict=True)
            style = {"color": f"C{i}", "label": policy}
            if policy == "vanilla":
                ax.plot(x, y, linestyle="none", marker="*", markersize=14, **style)
            else:
                ax.plot(x, y, marker=MARKERS[i % len(MARKERS)], alpha=0.85, **style)
        ax.set_xlabel("mean retention (share of full-resolution visual tokens)")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        frames_text = f"{frames} frames" if isinstance(frames, int) else f"frames at {frames}"
        ax.set_title(f"{title}, {frames_text}", fontsize=10)
        ax.legend(fontsize=8, loc="best")
    fig.savefig(path, dpi=120)


def write_outputs(out: Path, config: EvalConfig, backbone: str, rows: list[dict], skipped) -> None:
    """results.json, results.csv and frontier.png in ``out``."""
    meta = {"backbone": backbone, "config": config.to_json(), "skipped_rows": dict(skipped)}
    (out / "results.json").write_text(json.dumps(meta | {"rows": rows}, indent=2) + "\n")
    flat = [{k: v for k, v in r.items() if k != "benchmark"} | r.get("benchmark", {}) for r in rows]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in flat for k in r)))
        writer.writeheader()
        writer.writerows(flat)
    plot_frontier(rows, out / "frontier.png", f"{Path(backbone).name}")


# ---------------------------------------------------------------------------------------- entry
def load(config: EvalConfig) -> tuple[Pipeline, dict[str, Learned], str]:
    """Load the backbone once and every allocator the policies name; returns the backbone name."""
    backbone = load_backbone(config)
    learned = {}
    for spec in config.policies:
        if spec.name != "learned":
            continue
        path = spec.allocator or default_allocator_for(config, backbone)
        if path is None:
            raise PolicyError(
                f"learned needs an allocator trained against {backbone.name}: write learned:PATH "
                "in --policies"
            )
        allow = config.allow_mismatched_allocator
        learned[spec.label] = load_allocator(path, backbone, allow_mismatched=allow)
    return Pipeline(backbone), learned, backbone.name


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
    summary = Summary(config)
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
        logger.warning("examples over budget at the smallest sizes, left out: %s", dict(+over))
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
        print(f"\nwrote results.json, results.csv, records.jsonl and frontier.png to {config.out}")

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
