"""End to end per method at one visual-token budget: latency per stage and peak memory on this CPU.

``python -m benchmarks.e2e [--setups bundled,qwen2.5-vl-7b,qwen3-vl-8b]
[--policies vanilla,uniform,learned,attention,keyframes,prune,learned+prune] [--budget 0.15]
[--encode-budget 0.25] [--allocator assets/allocator] [--frames 16]
[--frame-counts 32,128] [--side 448] [--max-new-tokens 8] [--no-warmup] [--tiny]
[--json-out PATH]``

Every method answers the same question about the same clip with at most ``--budget`` × the
full-resolution visual tokens reaching the language model (vanilla: all of them). A method is any
policy name, ``scorer+operator`` combinations included (``learned+prune`` encodes
``--encode-budget`` × the full-resolution tokens in the tower, then prunes to ``--budget``). Setups:
  * ``bundled``: the bundled trained backbone and ``--allocator`` (default the bundled one) on
    the first bundled example clip (16 frames at 168²; a ``--frames`` beyond the clip repeats its
    last frame).
  * ``qwen2.5-vl-7b`` / ``qwen3-vl-8b``: the published widths at reduced depth with random weights
    (``benchmarks.real_size``: scale the vision / prefill / generate seconds linearly to 32 / 27
    vision blocks and 28 / 36 language layers), on a generated ``--side``² clip at every count of
    ``--frame-counts``. No allocator was trained against them: ``learned`` runs ``--allocator``
    with ``allow_mismatched=True``, so its cost is what is measured (its choices, like
    every answer of a random model, mean nothing). A video of more chunks than the allocator
    accepts is a refused row (one sentence), not a crash. When ``--allocator`` is a probe head
    (it reads its own backbone's layers and heads), ``learned`` is an untrained probe head of the
    same recipe (its probe budget and fill rule) built for the shape
    (``benchmarks.real_size.probe_head``): its probe pass through every built layer is in ``alloc``.

Each (setup, frames, method) runs in a fresh child process, so its peak resident memory (VmHWM)
is its own (before the timed request it answers a short one, two chunks without a budget, with
the same method, untimed, so that one-off start-up costs are left out; ``--no-warmup`` times a
cold process): ``peak`` is the absolute peak, ``Δpeak`` the peak above the built model (peak − the
resident memory once the model and allocator are loaded), the part a method changes. Seconds per
stage, which sum to ``total``:
  * ``decode``: ``Pipeline.decode`` (sample the frames once);
  * ``alloc``: ``Pipeline.allocate``, the policy's probe pass included (attention and keyframes
    encode every chunk at low resolution through the backbone; its seconds in parentheses);
  * ``prepare``: resizing the chunks and the processor (``backbone.batches``);
  * ``vision``: the forwards of the vision tower (inside the first forward of ``generate``, or
    for ``prune`` and ``SCORER+prune`` in ``Pipeline.encode`` before it, with the token scoring);
  * ``prefill``: the first language-model forward of ``generate`` less any tower time inside it;
  * ``generate``: the later forwards (one per generated token after the first);
  * ``other``: the rest (pruning's token selection, generate's own bookkeeping, decoding text).
``total÷van``, ``peak÷van`` and ``Δpeak÷van`` divide by the vanilla row of the same setup and
frame count in the same run; ``LM tokens`` are the visual tokens reaching the language model with
their share of vanilla's, ``encoded`` those through the vision tower (``prune``: all of them).

Reading it: a method pays off where ``total÷van`` is below 1; ``alloc`` is what it spends to
decide, ``vision`` + ``prefill`` what it saves (``prune`` saves only the prefill: its tower sees
every token). For the real-shaped setups the full-depth cost is about ``decode`` + ``alloc``
(whose probe also scales with depth) + ``prepare`` + the three model stages times the depth ratio;
``Δpeak`` is activations and caches, which grow with the tokens, not with the weights. Timings on
a shared CPU move by tens of percent from run to run; compare rows of the same run.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from benchmarks import real_size
from benchmarks.decode import peak_rss_bytes, write_clip
from resadapt import cli
from resadapt.assets import BUNDLED_ALLOCATOR, BUNDLED_BACKBONE, examples
from resadapt.backbone import Backbone
from resadapt.config import MAX_NEW_TOKENS, ModelConfig, Request
from resadapt.errors import ResAdaptError
from resadapt.pipeline import Pipeline, load_allocator, load_pipeline
from resadapt.policies import Vanilla, policy_choices
from resadapt.world.tiny import build_tiny

GIB = real_size.GIB
BUNDLED = "bundled"
SETUPS = (BUNDLED, *real_size.FAMILIES)
METHODS = ("vanilla", "uniform", "learned", "attention", "keyframes", "prune")
STAGES = ("decode_s", "allocate_s", "prepare_s", "vision_s", "prefill_s", "generate_s", "other_s")
"""Seconds per stage of one row; they sum to ``total_s``."""


@dataclass
class E2EConfig:
    """What the benchmark builds and measures."""

    setups: tuple[str, ...] = cli.option(
        "comma list: bundled (the bundled backbone and allocator) and real-shaped models",
        SETUPS,
        choices=SETUPS,
    )
    policies: tuple[str, ...] = cli.option(
        "comma list of methods: policies and scorer+operator combinations (vanilla is the "
        "reference of the ratios)",
        METHODS,
        choices=policy_choices,
    )
    budget: float = cli.option(
        "retention: share of the full-resolution visual tokens that may reach the language model",
        0.15,
    )
    encode_budget: float | None = cli.option(
        "SCORER+prune methods: share of the full-resolution tokens the tower encodes before "
        "pruning to --budget (default: the pipeline's)",
        None,
    )
    allocator: str = cli.option(
        "the learned policy's allocator folder (a probe head is rebuilt untrained for each "
        "real-shaped model with the same recipe: its probe budget and fill rule)",
        str(BUNDLED_ALLOCATOR),
    )
    frames: int = cli.option("frames sampled by the bundled setup", 16)
    frame_counts: tuple[int, ...] = cli.option("frame counts of the real-shaped setups", (32, 128))
    side: int = cli.option("frame side of the real-shaped setups' clip (full resolution)", 448)
    text_layers: int = cli.option("language-model layers built (published: 28 / 36)", 2)
    vision_blocks: int = cli.option("vision-tower blocks built (published: 32 / 27)", 2)
    max_new_tokens: int = cli.option("tokens generated per answer (fewer on an early stop)", 8)
    dtype: str = cli.option("weights and activations", "float32", choices=("float32", "bfloat16"))
    warmup: bool = cli.option(
        "answer a short request (two chunks, no budget) with the same method first, untimed, so "
        "that one-off start-up costs (lazy imports, kernel set-up) are not measured",
        True,
    )
    tiny: bool = cli.option("tiny widths for the real-shaped setups (seconds; for tests)", False)
    json_out: str | None = cli.option("also write every measurement to this JSON file", None)

    def __post_init__(self) -> None:
        self.setups, self.policies = tuple(self.setups), tuple(self.policies)
        self.frame_counts = tuple(self.frame_counts)
        if not 0 < self.budget <= 1:
            raise cli.UsageError(f"--budget must be in (0, 1], got {self.budget}")
        if self.encode_budget is not None and not 0 < self.encode_budget <= 1:
            raise cli.UsageError(f"--encode-budget must be in (0, 1], got {self.encode_budget}")
        if not self.setups or not self.policies:
            raise cli.UsageError("--setups and --policies need at least one name each")
        if min((self.frames, *self.frame_counts)) < 2 or self.side < 32:
            raise cli.UsageError("--frames and --frame-counts ≥ 2 and --side ≥ 32 are needed")
        if any(s != BUNDLED for s in self.setups) and not self.frame_counts:
            raise cli.UsageError("--frame-counts needs at least one count for real-shaped setups")
        if min(self.text_layers, self.vision_blocks) < 1:
            raise cli.UsageError("--text-layers and --vision-blocks must be ≥ 1")
        if not 0 < self.max_new_tokens <= MAX_NEW_TOKENS:
            raise cli.UsageError(f"--max-new-tokens must be in [1, {MAX_NEW_TOKENS}]")


# ------------------------------------------------------------------------------------ one child
class AnswerClock:
    """Forward hooks that split answering into vision tower, prefill and generation seconds.

    ``vision_s``: every forward of ``model.model.visual``, wherever it runs (inside the first
    forward of ``generate``, or before it in ``Pipeline.encode``); ``prefill_s``: the first forward
    of ``model`` after each :meth:`generate_started`, less the tower seconds inside it;
    ``generate_s``: the later forwards (less any tower seconds inside them), ``steps`` of them.
    """

    def __init__(self, model) -> None:
        self.vision_s = self.prefill_s = self.generate_s = 0.0
        self.steps = 0
        self._prefill_next = False
        self._vision_start = self._forward_start = self._vision_before = 0.0
        visual = model.model.visual
        self._handles = [
            visual.register_forward_pre_hook(self._vision_begin),
            visual.register_forward_hook(self._vision_end),
            model.register_forward_pre_hook(self._forward_begin),
            model.register_forward_hook(self._forward_end),
        ]

    def generate_started(self) -> None:
        """The next forward of the model is a prefill."""
        self._prefill_next = True

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _vision_begin(self, *_) -> None:
        self._vision_start = time.perf_counter()

    def _vision_end(self, *_) -> None:
        self.vision_s += time.perf_counter() - self._vision_start

    def _forward_begin(self, *_) -> None:
        self._vision_before = self.vision_s
        self._forward_start = time.perf_counter()

    def _forward_end(self, *_) -> None:
        seconds = time.perf_counter() - self._forward_start - (self.vision_s - self._vision_before)
        if self._prefill_next:
            self.prefill_s += seconds
            self._prefill_next = False
        else:
            self.generate_s += seconds
            self.steps += 1


def build_pipeline(config: E2EConfig, setup: str) -> Pipeline:
    """The bundled pipeline, or a real-shaped model (``benchmarks.real_size``) with the bundled
    allocator loaded against it although it was not trained for it (``allow_mismatched``)."""
    if setup == BUNDLED:
        bundled = ModelConfig(
            backbone=str(BUNDLED_BACKBONE),
            allocator=config.allocator,
            device="cpu",
            dtype=config.dtype,
        )
        return load_pipeline(bundled)
    tiny_name, config_class, model_class, _ = real_size.FAMILIES[setup]
    pixels = config.side * config.side
    processor = build_tiny(tiny_name, max_pixels=pixels)[1]  # the tiny tokenizer and processor
    layout = real_size.model_config(
        setup, config.text_layers, config.vision_blocks, config.tiny, processor.tokenizer
    )
    torch.manual_seed(0)
    model = model_class(config_class(**layout)).to(getattr(torch, config.dtype))
    backbone = Backbone(
        setup, model, processor, max_pixels=pixels, max_batch_tokens=real_size.NO_BUDGET_TOKENS
    )
    learned = load_allocator(config.allocator, backbone, allow_mismatched=True)
    if learned.runs_probe:  # a probe head reads its own model's layers and heads: one of this shape
        learned = real_size.probe_head(backbone, like=learned.allocator.config)
    return Pipeline(backbone, learned)


def answer(pipeline: Pipeline, request: Request, video: str) -> dict:
    """Decode, allocate and answer one request; tokens and seconds per stage (see the module
    docstring). Raises the pipeline's ResAdaptError (e.g. ChunkLimitError, BudgetError)."""
    backbone = pipeline.backbone
    t0 = time.perf_counter()
    sampled = pipeline.decode(video, request)
    t1 = time.perf_counter()
    allocation = pipeline.allocate(sampled, request)
    t2 = time.perf_counter()
    clock = AnswerClock(backbone.model)  # from here: answering only (not the probe)
    answers, prepare_s = [], 0.0
    try:
        start = time.perf_counter()
        chunked = pipeline.chunked(sampled, allocation)
        for _, inputs in backbone.batches([chunked], [request.question]):
            assert backbone.chunk_tokens(inputs) == [t for t in allocation.tokens if t], "tokens"
            prepare_s += time.perf_counter() - start
            inputs = pipeline.encode(inputs, [allocation])  # prune: the tower runs here
            clock.generate_started()
            answers += backbone.generate(inputs, request.max_new_tokens)
            start = time.perf_counter()
    finally:
        clock.remove()
    t3 = time.perf_counter()
    answer_s = t3 - t2
    return {
        "chunks": len(allocation.tokens),
        "kept_chunks": sum(allocation.kept),
        "lm_tokens": allocation.visual_tokens,
        "encoded_tokens": allocation.encoded_tokens,
        "vanilla_tokens": int(allocation.vanilla_tokens),
        "cap": pipeline.token_cap(request, allocation.vanilla_tokens),
        "probe_tokens": allocation.probe_visual_tokens,
        "probe_s": allocation.probe_s,
        "decode_s": t1 - t0,
        "allocate_s": t2 - t1,
        "prepare_s": prepare_s,
        "vision_s": clock.vision_s,
        "prefill_s": clock.prefill_s,
        "generate_s": clock.generate_s,
        "other_s": answer_s - prepare_s - clock.vision_s - clock.prefill_s - clock.generate_s,
        "total_s": t3 - t0,
        "steps": clock.steps,
        "answer": answers[0] if answers else "",
    }


def measure(
    config: E2EConfig, setup: str, frames: int, policy: str, video: str, question: str
) -> dict:
    """One (setup, frames, method) in this process: build, then :func:`answer`; memory too. A
    request the pipeline refuses (one sentence) gives ``refused: True`` and ``error``."""
    import psutil

    pipeline = build_pipeline(config, setup)
    weights = psutil.Process().memory_info().rss
    row = {
        "setup": setup,
        "frames": frames,
        "method": policy,
        "params": sum(p.numel() for p in pipeline.backbone.model.parameters()),
    }
    request = Request(
        question=question,
        policy=policy,
        budget=config.budget,
        encode_budget=config.encode_budget,
        num_frames=frames,
        max_new_tokens=config.max_new_tokens,
    )
    if config.warmup:
        short = 2 * pipeline.backbone.geometry.frames_per_chunk
        with contextlib.suppress(ResAdaptError):
            answer(pipeline, replace(request, num_frames=short, budget=None), video)
    try:
        row |= answer(pipeline, request, video)
    except ResAdaptError as e:
        row |= {"refused": True, "error": str(e)}
    peak = peak_rss_bytes()
    return row | {
        "weights_gib": weights / GIB,
        "peak_gib": peak / GIB,
        "above_gib": (peak - weights) / GIB,
    }


# ------------------------------------------------------------------------------------ parent
def run_child(
    config: E2EConfig, setup: str, frames: int, policy: str, video: str, question: str
) -> dict:
    """:func:`measure` in a fresh interpreter (its own peak memory); a crash as ``{"error"}``."""
    spec = {"config": asdict(config), "setup": setup, "frames": frames, "policy": policy}
    spec |= {"video": video, "question": question}
    command = [sys.executable, "-m", "benchmarks.e2e", "--child", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=real_size.ROOT)
    if done.returncode != 0:
        if done.returncode < 0:  # e.g. SIGKILL from the kernel's out-of-memory killer
            error = f"the child process was killed by signal {-done.returncode}"
        else:
            error = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {"setup": setup, "frames": frames, "method": policy, "error": error}
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_ratios(rows: list[dict]) -> list[dict]:
    """Set ``total_ratio``, ``peak_ratio``, ``above_ratio`` (to the vanilla row of the same setup
    and frames, None without one) and ``token_ratio`` (LM tokens ÷ vanilla's) on measured rows."""
    reference = [r for r in rows if r["method"] == Vanilla.name and "error" not in r]
    vanilla = {(r["setup"], r["frames"]): r for r in reference}
    for r in rows:
        if "error" in r:
            continue
        ref = vanilla.get((r["setup"], r["frames"]))
        r["token_ratio"] = r["lm_tokens"] / r["vanilla_tokens"]
        for key, value in (("total_ratio", "total_s"), ("peak_ratio", "peak_gib"),
                           ("above_ratio", "above_gib")):  # fmt: skip
            r[key] = r[value] / ref[value] if ref is not None and ref[value] > 0 else None
    return rows


HEADERS = ("setup", "frames", "method", "LM tokens (÷van)", "encoded", "decode", "alloc (probe)",
           "prepare", "vision", "prefill", "generate", "other", "total", "peak GiB", "Δpeak GiB",
           "total÷van", "peak÷van", "Δpeak÷van")  # fmt: skip


def _seconds(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def table(rows: list[dict]) -> str:
    """The measurements as a markdown table (seconds, GiB); a failed row shows its error."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows:
        where = f"| {r['setup']} | {r['frames']} | {r['method']} |"
        if "error" in r:
            lines.append(f"{where} {'refused' if r.get('refused') else 'failed'}: {r['error']} |")
            continue
        cells = [
            f"{r['lm_tokens']:,} ({r['token_ratio']:.3f})",
            f"{r['encoded_tokens']:,}",
            _seconds(r["decode_s"]),
            f"{_seconds(r['allocate_s'])} ({_seconds(r['probe_s'])})",
            *(_seconds(r[k]) for k in STAGES[2:]),
            _seconds(r["total_s"]),
            f"{r['peak_gib']:.2f}",
            f"{r['above_gib']:.2f}",
            *(_ratio(r[k]) for k in ("total_ratio", "peak_ratio", "above_ratio")),
        ]
        lines.append(where + " " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(config: E2EConfig, example: str, wall: float) -> str:
    """What was run, in words (printed above the table)."""
    shape = "tiny widths" if config.tiny else "published widths"
    lines = [
        f"budget {config.budget:g} (visual tokens reaching the language model ÷ full resolution); "
        + (f"encode budget {config.encode_budget:g}; " if config.encode_budget else "")
        + f"{config.max_new_tokens} new tokens at most; {config.dtype}; {torch.get_num_threads()} "
        f"threads; one child process per row; wall {wall:.0f} s",
    ]
    if BUNDLED in config.setups:
        lines.append(
            f"bundled: the bundled trained backbone and allocator, {config.frames} frames of "
            f"{example}"
        )
    real = [s for s in config.setups if s != BUNDLED]
    if real:
        lines.append(
            f"{', '.join(real)}: {shape}, {config.text_layers} language layers, "
            f"{config.vision_blocks} vision blocks, random weights; generated {config.side}x"
            f"{config.side} clip at {', '.join(map(str, config.frame_counts))} frames; learned = "
            f"{config.allocator} loaded with allow_mismatched=True (not trained against these "
            "models: its cost is measured, its choices and every answer are meaningless)"
        )
    return "\n".join(lines)


def jobs(config: E2EConfig, folder: Path) -> Iterator[tuple[str, int, str, str]]:
    """(setup, frames, video, question) in the order measured: the bundled setup, then every
    real-shaped setup at each frame count, smallest count first (clips written as needed)."""
    if BUNDLED in config.setups:
        example = examples()[0]
        yield BUNDLED, config.frames, example["video"], example["question"]
    for frames in sorted(config.frame_counts):
        clip = folder / f"clip-{config.side}-{frames}.mp4"
        for setup in (s for s in config.setups if s != BUNDLED):
            if not clip.exists():  # 30 fps source: every other frame is sampled
                side = config.side
                write_clip(clip, width=side, height=side, seconds=frames / 15 + 0.5, moving=True)
            yield setup, frames, str(clip), real_size.QUESTION


def run(config: E2EConfig, isolate: bool = True) -> list[dict]:
    """Every setup × frame count × method, each in its own child (``isolate=False``: in this
    process, for tests; peaks are then not each row's own); prints the table, returns the rows
    (with their ratios, ``--json-out`` or not). ``--json-out`` is rewritten after every row
    (``"complete": false`` until the last)."""
    start = time.perf_counter()
    measure_row = run_child if isolate else measure
    rows = []

    def save(complete: bool) -> None:
        if config.json_out:
            out = {"config": asdict(config), "complete": complete, "rows": add_ratios(rows)}
            out["wall_s"] = time.perf_counter() - start
            Path(config.json_out).write_text(json.dumps(out, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="resadapt-e2e-") as tmp:
        for setup, frames, video, question in jobs(config, Path(tmp)):
            for policy in config.policies:
                row = measure_row(config, setup, frames, policy, video, question)
                rows.append(row)
                save(complete=False)
                done = row.get("error") or f"{row['total_s']:.1f} s, {row['peak_gib']:.2f} GiB"
                print(f"{setup} {frames} {policy}: {done}", file=sys.stderr, flush=True)
    save(complete=True)
    add_ratios(rows)  # the table reads them: never only when --json-out is given
    example = Path(examples()[0]["video"]).name if BUNDLED in config.setups else ""
    print(header(config, example, time.perf_counter() - start))
    print(table(rows))
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # internal: one measurement, one JSON line on stdout
        spec = json.loads(argv[1])
        config = E2EConfig(**spec["config"])
        row = measure(
            config, spec["setup"], spec["frames"], spec["policy"], spec["video"], spec["question"]
        )
        print(json.dumps(row))
        return 0

    def body() -> None:
        args = cli.parse(
            argv, E2EConfig, prog="python -m benchmarks.e2e", description=__doc__.splitlines()[0]
        )
        run(cli.make(E2EConfig, args))

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
