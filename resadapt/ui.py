"""What the app shows for a question: budget chart rows, resized frames, summary, policy comparison.

Owns the app's input limits, the form → Request conversion, and turning one decoded video plus its
allocation and Result into presentation data (pandas frames, (image, caption) pairs, markdown).
Knows nothing about gradio: ``app.py`` wires these functions to widgets.

Letters: T sampled frames, K chunks, F frames per chunk, H W pixels.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from resadapt.assets import examples, is_bundled, is_random_backbone, provenance
from resadapt.cli import default_of
from resadapt.config import Request
from resadapt.errors import BudgetError, PolicyError, VideoError
from resadapt.grading import grade
from resadapt.pipeline import Allocation, Pipeline, Result
from resadapt.policies import COMPOSE, policy_class, policy_names
from resadapt.video import SampledVideo, container_duration, resize_frames

MAX_UPLOAD_MB = 200
"""Largest upload the app accepts, in megabytes (gradio rejects bigger files before they land)."""
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
MAX_DURATION_S = 30 * 60.0
"""Longest video the app accepts, in seconds (the library itself allows hours; a demo does not)."""
MAX_GALLERY_FRAMES = 64
"""Most frames the gallery shows (evenly spaced when more were sampled)."""
CANVAS_GREY = 24
"""Grey level of the base-size canvas a downscaled frame is centred on in the gallery."""
DEFAULT_RETENTION = 0.15
"""Retention the app starts with: the share of the full-resolution visual tokens the bundled
allocator was trained for."""
COMPARE_COLUMNS = (
    "policy", "answer", "visual tokens", "probe tokens", "vanilla tokens", "retention",
    "allocator s", "backbone s", "total s",
)  # fmt: skip
"""Columns of :func:`compare_table`."""

OWN_OPERATOR = "resize"
OPERATOR_CHOICES = (OWN_OPERATOR, "select", "prune", "select+prune")
"""The app's operator choice beside the policy: ``resize`` runs the policy as chosen; another
composes ``policy+operator`` (resadapt.policies.compose)."""

Report = Callable[..., object]
"""A progress sink called as ``report(fraction, desc=...)`` (gradio's Progress fits)."""


# ---------------------------------------------------------------------------------------- inputs
@dataclass
class Form:
    """The app's inputs besides the video, as widgets hold them: 0 or None means "not set"."""

    question: str
    policy: str | None = None
    """A policy name; None: the pipeline's default."""
    budget: float | None = DEFAULT_RETENTION
    """Retention R in (0, 1]; 0 or None: no retention cap."""
    max_visual_tokens: float | None = None
    """Absolute visual-token cap; 0 or None: no cap."""
    num_frames: float | None = None
    """Frames to sample; 0 or None: sample by ``fps``."""
    fps: float | None = default_of(Request, "fps")
    max_new_tokens: float = default_of(Request, "max_new_tokens")
    operator: str | None = None
    """One of OPERATOR_CHOICES after the policy; None or ``resize``: the policy as chosen."""
    encode_budget: float | None = None
    """``+prune``: the tower's share of the full-resolution tokens; 0 or None: the default."""

    def request(self) -> Request:
        """The validated Request; raises a ResAdaptError naming the bad field."""
        offered = offered_policies()
        if self.policy is not None and self.policy not in offered:
            raise PolicyError(f"unknown policy {self.policy!r}; choose one of {', '.join(offered)}")
        policy = self.policy
        if self.operator not in (None, OWN_OPERATOR):
            if self.operator not in OPERATOR_CHOICES:
                choices = ", ".join(OPERATOR_CHOICES)
                raise PolicyError(f"unknown operator {self.operator!r}; choose one of {choices}")
            if policy is None:
                raise PolicyError(f"choose a policy to follow with the {self.operator} operator")
            policy = COMPOSE.join((policy, self.operator))
        if self.fps is None:
            raise BudgetError("fps must be a positive number of frames per second, got nothing")
        return Request(
            question=self.question,
            policy=policy,
            encode_budget=_unset_zero(self.encode_budget),
            budget=_unset_zero(self.budget),
            max_visual_tokens=_count("max visual tokens", self.max_visual_tokens),
            num_frames=_count("the frame count", self.num_frames),
            fps=float(self.fps),
            max_new_tokens=_count("max new tokens", self.max_new_tokens) or 0,
        )


def _unset_zero(value: float | None) -> float | None:
    return None if value is None or value == 0 else float(value)


def _count(name: str, value: float | None) -> int | None:
    """A whole number from a numeric widget (which may hold 12.0); 0 or None means not set."""
    if value is None or value == 0:
        return None
    if float(value) != int(value):
        raise BudgetError(f"{name} must be a whole number, got {value}")
    return int(value)


def offered_policies() -> tuple[str, ...]:
    """The registered policies the app offers (``Policy.app`` not None), in the order shown."""
    entries = {n: policy_class(n).app for n in policy_names()}
    offered = [n for n, entry in entries.items() if entry is not None]
    return tuple(sorted(offered, key=lambda n: entries[n].rank))  # ties: registration order


def policy_choices(pipeline: Pipeline) -> list[tuple[str, str]]:
    """(label, value) pairs, the label ``name (description)``; a policy that needs an allocator is
    labelled unavailable when none is loaded."""
    choices = []
    for name in offered_policies():
        cls = policy_class(name)
        if cls.needs_allocator and pipeline.learned is None:
            choices.append((f"{name} — unavailable: no allocator checkpoint", name))
        else:
            choices.append((f"{name} ({cls.description})", name))
    return choices


def compare_policies(pipeline: Pipeline) -> tuple[str, ...]:
    """The pipeline's default policy (learned, or attention while no allocator is loaded), then the
    offered policies marked ``compared`` (the two peer families, keyframes: frame selection and
    prune: post-encoder pruning; uniform and vanilla)."""
    default = pipeline.default_policy
    compared = (n for n in offered_policies() if policy_class(n).app.compared and n != default)
    return (default, *compared)


def example_rows() -> list[list[str]]:
    """[video path, question] of every bundled example clip."""
    return [[row["video"], row["question"]] for row in examples()]


def status_markdown(pipeline: Pipeline) -> str:
    """What runs: backbone and allocator with their provenance, the compatibility verdict and the
    default policy with its reason; plain warnings where answers are meaningless."""
    name = pipeline.backbone.name
    lines = [f"**Backbone:** `{name}` ({provenance(name)})"]
    if is_random_backbone(name):
        lines[0] += (
            " — ⚠️ **random weights: its answers are meaningless.** The budget, the chart and the"
            " frames are real, the text is not."
        )
    if is_bundled(name):
        lines[0] += (
            " — the bundled tiny Qwen2.5-VL, trained only on the synthetic card task: answers about"
            " any other video are meaningless (the budget, the chart and the frames are real)."
        )
    learned = pipeline.learned
    if learned is not None:
        lines.append(f"**Allocator:** `{learned.path}` ({provenance(learned.path)})")
        if learned.warning:
            lines[-1] += f" — ⚠️ not trained against this backbone: {learned.warning}."
        else:
            lines[-1] += " — trained against this backbone (checked when it was loaded)."
        if is_bundled(learned.path):
            lines[-1] += (
                " It learned where to look from the tiny backbone's attention, and that backbone's"
                " recipe trains one attention head to look at the queried card: a cleaner signal"
                " than a real Qwen-VL's attention would give."
            )
        reason = "an allocator is loaded for this backbone"
    else:
        lines.append(
            "**Allocator:** none trained against this backbone — the *learned* policy is"
            " unavailable (set `RESADAPT_ALLOCATOR` or `--allocator`)."
        )
        reason = (
            "no allocator is loaded; it needs no training: a cheap low-resolution pass of the"
            " backbone itself, whose attention from the question to each chunk sets the scales"
            " (its tokens are reported)"
        )
    lines.append(f"**Default policy:** *{pipeline.default_policy}* — {reason}.")
    return "  \n".join(lines)


def bundled_example(path: str | None, question: str) -> dict | None:
    """The bundled example (an :func:`resadapt.assets.examples` row) that ``path`` and
    ``question`` are, matched by the video's file name since the app receives a copy; or None."""
    if not path:
        return None
    name = Path(path).name
    for row in examples():
        if Path(row["video"]).name == name and row["question"].strip() == question.strip():
            return row
    return None


# ---------------------------------------------------------------------------------------- running
@dataclass
class View:
    """What the app shows at one moment of a question's run; None means "unchanged"."""

    answer: str
    budget: pd.DataFrame | None = None
    """Per-frame rows for the budget chart (see :func:`budget_rows`)."""
    gallery: list[tuple[np.ndarray, str]] | None = None
    summary: str | None = None
    result: dict | None = None
    """The ``ask --json`` object (final once the run is done)."""

    def outputs(self) -> tuple:
        """In the app's order: answer, tokens chart, scale chart, gallery, summary, JSON."""
        return (self.answer, self.budget, self.budget, self.gallery, self.summary, self.result)


def decode(pipeline: Pipeline, path: str | None, request: Request) -> SampledVideo:
    """Sample the frames once, with the app's limits; messages name the file, not its temp path."""
    if not path:
        raise VideoError("no video was given: upload a video file or pick an example first")
    name = Path(path).name
    if os.path.isfile(path) and os.path.getsize(path) > MAX_UPLOAD_BYTES:
        size_mb = os.path.getsize(path) / 2**20
        raise VideoError(f"{name} is {size_mb:.0f} MB; the app accepts up to {MAX_UPLOAD_MB} MB")
    try:
        _check_duration(name, container_duration(path))  # from the header, before sampling
        video = pipeline.decode(path, request)
    except VideoError as e:
        raise VideoError(str(e).replace(str(path), name)) from e
    _check_duration(name, video.duration_s)  # a header without a duration: the decoded span
    return video


def _check_duration(name: str, duration_s: float | None) -> None:
    if duration_s is not None and duration_s > MAX_DURATION_S:
        raise VideoError(
            f"{name} is {duration_s / 60:.1f} min long; the app accepts videos up to "
            f"{MAX_DURATION_S / 60:.0f} min"
        )


def answer_views(
    pipeline: Pipeline, path: str | None, form: Form, report: Report | None = None
) -> Iterator[View]:
    """Run one question and yield what to show: everything once allocated, then the answer grows."""
    report = report or _silent
    request = form.request()
    report(0.05, desc="decoding the video")
    t0 = time.perf_counter()
    video = decode(pipeline, path, request)
    t1 = time.perf_counter()
    report(0.3, desc=f"allocating with the {pipeline.policy_name(request)} policy")
    allocation = pipeline.allocate(video, request)
    timings = {"decode_s": t1 - t0, "allocate_s": time.perf_counter() - t1}
    report(0.5, desc="encoding the frames and answering")
    frames_per_chunk = pipeline.backbone.geometry.frames_per_chunk
    result = None
    for i, result in enumerate(pipeline.answer_stream(video, allocation, request, timings)):
        if i == 0:  # allocation known, nothing generated yet: everything but the answer
            yield View(
                answer="",
                budget=budget_rows(result.to_json()),
                gallery=gallery_items(video, allocation, frames_per_chunk),
                summary=summary_markdown(result.to_json()),
            )
        else:
            yield View(answer=result.answer)
    assert result is not None
    final = result.to_json()
    example = bundled_example(path, form.question)
    yield View(
        answer=display_answer(result),
        summary=summary_markdown(final, done=True, example=example),
        result=final,
    )


def answer_json(pipeline: Pipeline, path: str | None, form: Form) -> dict:
    """The ``python -m resadapt.ask --json`` object for one question (what ``/answer`` returns)."""
    *_, last = answer_views(pipeline, path, form)
    assert last.result is not None
    return last.result


def answer_outputs(pipeline: Pipeline, path: str | None, form: Form) -> tuple:
    """Every output of :func:`answer_views` at its last value (View.outputs order): what a cached
    example shows, all at once."""
    outputs: list = [None] * len(View("").outputs())
    for view in answer_views(pipeline, path, form):
        outputs = [
            old if new is None else new for old, new in zip(outputs, view.outputs(), strict=True)
        ]
    return tuple(outputs)


def compare(
    pipeline: Pipeline,
    path: str | None,
    form: Form,
    policies: tuple[str, ...] | None = None,
    report: Report | None = None,
) -> dict:
    """The same question at the same budget through several policies, decoding the video once.

    ``form.policy`` is ignored: ``policies`` (default :func:`compare_policies`) are run in order.
    The budget is the form's; when it sets none, the first policy's spend becomes the cap of the
    others, so they are compared at equal cost (vanilla always spends the full resolution).
    Every result's ``decode_s`` is the one shared decode. A policy that cannot meet the budget
    (keyframes below one full-resolution chunk) is listed in ``refused`` with its one sentence
    instead of failing the comparison. Returns ``{"question", "visual_token_cap", "results":
    [ask --json object per policy], "refused": [{"policy", "error"}]}``.
    """
    report = report or _silent
    policies = policies or compare_policies(pipeline)
    request = form.request()
    report(0.02, desc="decoding the video once")
    t0 = time.perf_counter()
    video = decode(pipeline, path, request)
    decode_s = time.perf_counter() - t0
    cap = pipeline.token_cap(request, pipeline.vanilla_tokens(video))
    results, refused = [], []
    for i, policy in enumerate(policies):
        report(0.05 + 0.9 * i / len(policies), desc=f"policy {policy} ({i + 1}/{len(policies)})")
        run = dataclasses.replace(request, policy=policy)
        if cap is not None:
            run = dataclasses.replace(run, budget=None, max_visual_tokens=cap)
        t1 = time.perf_counter()
        try:
            allocation = pipeline.allocate(video, run)
        except BudgetError as e:
            refused.append({"policy": policy, "error": str(e)})
            continue
        timings = {"decode_s": decode_s, "allocate_s": time.perf_counter() - t1}
        *_, result = pipeline.answer_stream(video, allocation, run, timings)
        results.append(result.to_json())
        if cap is None and policy_class(policy).capped:
            cap = result.visual_tokens
    report(1.0, desc="done")
    return {
        "question": request.question,
        "visual_token_cap": cap,
        "results": results,
        "refused": refused,
    }


def _silent(*args, **kwargs) -> None:
    return None


# ---------------------------------------------------------------------------------------- views
def display_answer(result: Result) -> str:
    """The answer as shown to a person (an empty generation is said, not left blank)."""
    return result.answer or "(the backbone returned an empty answer)"


def budget_rows(result: dict) -> pd.DataFrame:
    """One row per sampled frame: time_s, frame, chunk, scale, tokens, size.

    ``tokens`` is the visual tokens of the frame's chunk (the F frames of a chunk are one temporal
    patch and share it), so the chart is a step per chunk; the chunks' tokens sum to the total.
    """
    tokens = [c["visual_tokens"] for c in result["chunks"]]  # (K,)
    return pd.DataFrame(
        {
            "time_s": [f["timestamp"] for f in result["frames"]],
            "frame": [f["index"] for f in result["frames"]],
            "chunk": [f["chunk"] for f in result["frames"]],
            "scale": [f["scale"] for f in result["frames"]],
            "tokens": [tokens[f["chunk"]] for f in result["frames"]],
            "size": [f"{f['height']}x{f['width']}" for f in result["frames"]],
        }
    )


def gallery_items(
    video: SampledVideo, allocation: Allocation, frames_per_chunk: int
) -> list[tuple[np.ndarray, str]]:
    """Every sampled frame at its allocated size, centred on a base-size canvas, with a caption.

    The canvas keeps the gallery's cells alike while a frame's area still shows its budget.
    At most MAX_GALLERY_FRAMES frames, evenly spaced.
    """
    base_h, base_w = video.base_size
    shown = np.unique(np.linspace(0, len(video.frames) - 1, MAX_GALLERY_FRAMES).round().astype(int))
    shown = shown[shown < len(allocation.sizes) * frames_per_chunk]
    items = []
    for t in shown.tolist():
        k = t // frames_per_chunk
        h, w = allocation.sizes[k]
        if not h:  # a chunk the policy dropped: an empty canvas
            canvas = np.full((base_h, base_w, 3), CANVAS_GREY, np.uint8)
            items.append((canvas, f"{video.timestamps[t]:.2f} s · dropped (chunk {k})"))
            continue
        frame = resize_frames(video.frames[t : t + 1], (h, w))[0]  # (h, w, 3)
        canvas = np.full((max(base_h, h), max(base_w, w), 3), CANVAS_GREY, np.uint8)
        top, left = (canvas.shape[0] - h) // 2, (canvas.shape[1] - w) // 2
        canvas[top : top + h, left : left + w] = frame
        caption = (
            f"{video.timestamps[t]:.2f} s · {allocation.chunk_tokens[k]} tokens · scale "
            f"{allocation.scales[k]:.2f} · {h}×{w} (chunk {k})"
        )
        items.append((canvas, caption))
    return items


def summary_markdown(result: dict, done: bool = False, example: dict | None = None) -> str:
    """Visual tokens against vanilla, retention, and (once done) the time per stage and, for a
    bundled example, the expected answer next to the model's."""
    spent, full = result["visual_tokens"], result["vanilla_visual_tokens"]
    k, t = len(result["chunks"]), len(result["frames"])
    lines = [
        f"**{spent} visual tokens** of {full} at full resolution — retention "
        f"**{result['retention']:.1%}**, {full - spent} saved. Policy *{result['policy']}*, "
        f"{t} frames in {k} chunks.",
    ]
    dropped = sum(c.get("dropped", False) for c in result["chunks"])
    if dropped:
        lines[0] += f" {dropped} of the {k} chunks were dropped (never encoded)."
    encoded = result.get("encoded_visual_tokens", spent)
    if encoded > spent:
        lines[0] += (
            f" The vision tower encoded {encoded} visual tokens at full resolution before "
            f"pruning to {spent}."
        )
    probe = result["probe_visual_tokens"]
    if probe:
        lines[0] += (
            f" Its probe pass read {probe} more visual tokens (with them, "
            f"{(spent + probe) / full:.1%} of full resolution)."
        )
    if result["allocator_warning"]:
        lines[0] += f" ⚠️ {result['allocator_warning']}."
    for note in result["notes"]:
        lines[0] += f" Note: {note}."
    timings = result["timings"]
    if done:
        if example is not None:
            right = grade(
                example["problem_type"], result["answer"], example["answer"], example["num_options"]
            )
            verdict = "right" if right == 1.0 else "wrong"
            lines += [
                "",
                f"**Expected answer** (bundled example): `{example['answer']}` — the model "
                f"answered `{result['answer'].strip() or '(nothing)'}`: {verdict}.",
            ]
        probe_s = timings.get("probe_s", 0.0)
        tower_s = timings.get("tower_s", 0.0)
        lines += [
            "",
            "| decode | allocator (probe) | backbone (pruning tower) | total |",
            "|---:|---:|---:|---:|",
            f"| {timings['decode_s']:.2f} s | {timings['allocate_s']:.3f} s ({probe_s:.3f} s) | "
            f"{timings['backbone_s']:.2f} s ({tower_s:.2f} s) | {timings['total_s']:.2f} s |",
        ]
    else:
        lines += [
            "",
            f"decode {timings['decode_s']:.2f} s · allocator {timings['allocate_s']:.3f} s · "
            "answering…",
        ]
    return "\n".join(lines)


def compare_table(comparison: dict) -> pd.DataFrame:
    """One row per policy: answer, tokens, retention and time (the side-by-side view)."""
    rows = []
    for r in comparison["results"]:
        t = r["timings"]
        row = (
            r["policy"],
            r["answer"] or "(empty)",
            r["visual_tokens"],
            r["probe_visual_tokens"],
            r["vanilla_visual_tokens"],
            f"{r['retention']:.1%}",
            round(t["allocate_s"], 3),
            round(t["backbone_s"], 2),
            round(t["total_s"], 2),
        )
        rows.append(dict(zip(COMPARE_COLUMNS, row, strict=True)))
    for r in comparison.get("refused", []):
        rows.append({"policy": r["policy"], "answer": f"refused: {r['error']}"})
    return pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))


def compare_rows(comparison: dict) -> pd.DataFrame:
    """Long-format chart rows: time_s, tokens, policy (one line per policy over time)."""
    frames = [budget_rows(r).assign(policy=r["policy"]) for r in comparison["results"]]
    return pd.concat(frames, ignore_index=True)[["time_s", "tokens", "scale", "policy"]]


def compare_views(comparison: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The side-by-side table and the per-policy chart rows of one comparison."""
    return compare_table(comparison), compare_rows(comparison)
