"""Real-sized Qwen2.5-VL-7B and Qwen3-VL-8B shapes on this CPU: memory and time per stage.

``python -m benchmarks.real_size [--families qwen2.5-vl-7b,qwen3-vl-8b] [--text-layers 2]
[--vision-blocks 2] [--frames 64] [--side 448] [--budget 0.15] [--rows 2]``

No checkpoint can be downloaded here, so the models are built from configuration with random
weights (a forward's cost does not depend on the weights' values): every width of the published
``config.json`` (below, with where each number comes from) and only the depth reduced, so that a
reader scales the per-stage times linearly to 28 / 36 language layers and 32 / 27 vision blocks.
One run measures, for each family, ``--rows`` questions about one generated ``--frames``-frame
``--side``² clip under
  * ``vanilla`` (every chunk at full resolution) and ``fixed`` (a learned-style, peaked scale vector
    fitted to ``--budget`` retention; any other policy of ``resadapt.policies.policy_names()``, e.g.
    ``attention`` (its probe pass counts in ``allocate``), can be named in ``--policies``), and
  * ``probe`` (a probe-head allocator built for the model, untrained: its probe pass through every
    built layer counts in ``allocate``) and ``probe-train`` (one CAPO training step of that head:
    the probe pass, ``--rows`` sampled allocations answered by the model, the update; ``train_s``),
  * one prefill for all rows (``batched``) against micro-batches under ``--max-batch-tokens``
    (``budgeted``),
each in a fresh child process: peak resident memory (VmHWM), the resident memory of the built model,
and seconds per stage: decode, allocate, prepare (resize + processor), vision tower, language
prefill (first forward minus the vision tower) and generation (the later forwards).
``--tiny`` runs the same code with tiny widths (the test).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from benchmarks.decode import peak_rss_bytes, write_clip
from resadapt import cli
from resadapt.backbone import Backbone
from resadapt.config import Request
from resadapt.pipeline import Pipeline
from resadapt.policies import policy_class, policy_names
from resadapt.world.tiny import build_tiny, mrope_section, vision_token_ids

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
QUESTION = "What is written on the sign that appears near the end of the video?"

# Qwen/Qwen2.5-VL-7B-Instruct, config.json as published on the Hugging Face hub (text fields at the
# top level there, "vision_config" nested; transformers 5 reads them as text_config).
QWEN2_5_VL_7B = {
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128000,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [16, 24, 24],
        },
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
    },
    "tie_word_embeddings": False,
}
# Qwen/Qwen3-VL-8B-Instruct, config.json as published on the Hugging Face hub.
QWEN3_VL_8B = {
    "text_config": {
        "vocab_size": 151936,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 262144,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "depth": 27,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_heads": 16,
        "out_hidden_size": 4096,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [8, 16, 24],
    },
    "tie_word_embeddings": False,
}
TINY_WIDTHS = {
    "text_config": {
        "vocab_size": 1024,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_heads": 4},
}
"""``--tiny``: the same layouts at widths that run in seconds (head_dim 16)."""
FAMILIES = {
    "qwen2.5-vl-7b": (
        "tiny-random-qwen2.5-vl",
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        QWEN2_5_VL_7B,
    ),
    "qwen3-vl-8b": (
        "tiny-random-qwen3-vl",
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        QWEN3_VL_8B,
    ),
}
"""Benchmark name → (tiny backbone whose processor and tokenizer are used, config class, model
class, published config)."""
LAYER_LISTS = ("fullatt_block_indexes", "deepstack_visual_indexes")
"""Vision-config lists of block indexes; at a reduced depth the published indexes below it are kept
(the last block when none is)."""
NO_BUDGET_TOKENS = 1 << 40
"""``batched``: a micro-batch budget no batch reaches (every row in one prefill)."""


def fixed_scales(num_chunks: int) -> np.ndarray:
    """(K,) a learned-style peaked allocation: every 8th chunk (from the 4th) at full scale, the
    others at 0.35; the pipeline then fits it to the budget keeping the preference."""
    return np.where(np.arange(num_chunks) % 8 == 3, 1.0, 0.35)


def model_config(family: str, text_layers: int, vision_blocks: int, tiny: bool, tokenizer) -> dict:
    """The published config of ``family`` at the reduced depth (tiny widths with ``tiny``)."""
    values = copy.deepcopy(FAMILIES[family][3])
    text, vision = values["text_config"], values["vision_config"]
    if tiny:
        text.update(TINY_WIDTHS["text_config"])
        vision.update(TINY_WIDTHS["vision_config"], out_hidden_size=text["hidden_size"])
        head_dim = text["hidden_size"] // text["num_attention_heads"]
        text["head_dim"] = head_dim
        text["rope_parameters"]["mrope_section"] = mrope_section(head_dim)
    text["num_hidden_layers"] = text_layers
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    text.update(ids, bos_token_id=tokenizer.pad_token_id)  # the tiny tokenizer's ids
    vision["depth"] = vision_blocks
    for key in LAYER_LISTS:
        if key in vision:
            vision[key] = [i for i in vision[key] if i < vision_blocks] or [vision_blocks - 1]
    return values | vision_token_ids(tokenizer)


@dataclass
class RealSizeConfig:
    """What the benchmark builds and measures."""

    families: tuple[str, ...] = cli.option(
        "comma list of model shapes", tuple(FAMILIES), choices=tuple(FAMILIES)
    )
    policies: tuple[str, ...] = cli.option(
        "comma list: vanilla, fixed (a peaked scale vector fitted to --budget), probe (a "
        "probe-head allocator), probe-train (one CAPO step of it) or a policy name of "
        "resadapt.policies "
        "(fitted to --budget)",
        ("vanilla", "fixed"),
    )
    text_layers: int = cli.option("language-model layers built (published: 28 / 36)", 2)
    vision_blocks: int = cli.option("vision-tower blocks built (published: 32 / 27)", 2)
    frames: int = cli.option("frames sampled from the clip", 64)
    side: int = cli.option("frame side in pixels (the full-resolution size)", 448)
    budget: float = cli.option("retention of the non-vanilla policies", 0.15)
    rows: int = cli.option("questions about the clip answered together", 2)
    max_batch_tokens: int = cli.option(
        "micro-batch budget of the budgeted runs, in prompt tokens (default: one vanilla row "
        "at 64 frames of 448² for Qwen2.5-VL)",
        9000,
    )
    max_new_tokens: int = cli.option("tokens generated per answer", 4)
    dtype: str = cli.option("weights and activations", "float32", choices=("float32", "bfloat16"))
    tiny: bool = cli.option("tiny widths (the same code in seconds; for tests)", False)
    json_out: str | None = cli.option("also write every measurement to this JSON file", None)

    def __post_init__(self) -> None:
        for name in self.policies:
            if name not in EXTRA_POLICIES and name not in policy_names():
                raise cli.UsageError(f"--policies: unknown policy {name!r}")
        if self.frames < 2 or self.side < 32 or self.rows < 1:
            raise cli.UsageError("--frames ≥ 2, --side ≥ 32 and --rows ≥ 1 are needed")


EXTRA_POLICIES = ("fixed", "probe", "probe-train")
"""The benchmark's own rows besides the registered policies."""


def probe_head(backbone: Backbone, like=None):
    """An untrained probe-head allocator for ``backbone``, as the learned policy: the defaults of
    resadapt.train_data, or the recipe of the trained head ``like`` (an AllocatorConfig: its
    probe budget, fill rule and head sizes; the shape-bound fields — heads, width, chunk length —
    come from ``backbone``, and the probe reads every built layer)."""
    from allocator import Allocator, AllocatorConfig
    from allocator.config import SIGNATURE_FIELDS
    from resadapt.policies.learned import Learned
    from resadapt.train_data import probe_defaults

    values = {"thumb_encoder": "probe", "frames_per_chunk": backbone.geometry.frames_per_chunk}
    if like is not None:
        shaped = {"backbone", "probe_layers", "probe_heads", "probe_hidden_size", "probe_backbone"}
        shaped |= {"probe_weights_sha256", *SIGNATURE_FIELDS}
        values = {**{k: v for k, v in like.to_dict().items() if k not in shaped}, **values}
    probe_defaults(values, backbone)
    return Learned(Allocator(AllocatorConfig(**values)), backbone.tokenizer)


def probe_train_step(pipeline: Pipeline, learned, video, request: Request, rollouts: int) -> float:
    """Seconds of one CAPO step of the probe head on one prompt: probe pass, ``rollouts`` sampled
    allocations answered and graded, the clipped update."""
    from resadapt.capo import total_loss
    from resadapt.data import Example
    from resadapt.probe import FeatureCache
    from resadapt.rollout import Prompt, RolloutConfig, collect_rollouts
    from resadapt.trainer import policy_terms

    allocator = learned.allocator
    options = ["left", "right", "up", "down"]
    example = Example(video, QUESTION, "left", "multiple_choice", options)
    sampled = pipeline.decode(video, request)
    prompt = Prompt(example, replace(request, question=example.prompt()), sampled, 0)
    config = RolloutConfig(num_rollouts=max(2, rollouts), max_new_tokens=request.max_new_tokens)
    optimizer = torch.optim.AdamW(allocator.parameters(), lr=1e-3)
    start = time.perf_counter()
    batch = collect_rollouts(pipeline, allocator, [prompt], config, features=FeatureCache())
    allocator.train()
    out = allocator(**batch.inputs)
    pg, sim, con = policy_terms(
        out, batch.actions, batch.log_prob, batch.advantages, batch.chunk_mask, allocator.config
    )
    total_loss(
        pg, sim, con, pg.new_zeros(()), sim_weight=1e-3, con_weight=5e-4, attention_weight=0.0
    ).backward()
    optimizer.step()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------ one child
class StageClock:
    """Forward hooks on a model: seconds in its vision tower, in the forwards that follow a tower
    run (the prefills; generate may encode the video before its first forward) and in the others
    (generation steps)."""

    def __init__(self, model) -> None:
        self.vision_s = self.prefill_s = self.generate_s = 0.0
        self._start: dict[str, float] = {}
        self._vision_calls = 0
        for name, module in (("vision", model.model.visual), ("model", model)):
            module.register_forward_pre_hook(self._begin(name))
            module.register_forward_hook(self._end(name))

    def _begin(self, name: str):
        def hook(*_):
            self._start[name] = time.perf_counter()

        return hook

    def _end(self, name: str):
        def hook(*_):
            seconds = time.perf_counter() - self._start[name]
            if name == "vision":
                self.vision_s += seconds
                self._vision_calls += 1
            elif self._vision_calls:
                self.prefill_s += seconds
                self._vision_calls = 0
            else:
                self.generate_s += seconds

        return hook


def measure(config: RealSizeConfig, family: str, policy: str, batching: str, video: str) -> dict:
    """One configuration in this process: build, decode, allocate, answer; seconds and memory."""
    import psutil

    tiny_name, config_class, model_class, _ = FAMILIES[family]
    dtype = getattr(torch, config.dtype)
    _, processor = build_tiny(tiny_name, max_pixels=config.side * config.side)
    values = model_config(
        family, config.text_layers, config.vision_blocks, config.tiny, processor.tokenizer
    )
    torch.manual_seed(0)
    model = model_class(config_class(**values)).to(dtype).eval()
    budget = config.max_batch_tokens if batching == "budgeted" else NO_BUDGET_TOKENS
    backbone = Backbone(
        family, model, processor, max_pixels=config.side * config.side, max_batch_tokens=budget
    )
    probing = policy in ("probe", "probe-train")
    learned = probe_head(backbone) if probing else None
    pipeline = Pipeline(backbone, learned=learned)
    weights_rss = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    request = Request(
        question=QUESTION,
        policy=None if policy == "fixed" else "learned" if probing else policy,
        budget=config.budget if policy in EXTRA_POLICIES or policy_class(policy).capped else None,
        num_frames=config.frames,
        max_new_tokens=config.max_new_tokens,
    )
    sampled = pipeline.decode(video, request)
    t1 = time.perf_counter()
    k = len(sampled.frames) // backbone.geometry.frames_per_chunk
    scales = fixed_scales(k) if policy == "fixed" else None
    allocation = pipeline.allocate(sampled, request, scales=scales)  # with a policy's own probe
    clock = StageClock(model)  # from here: answering only
    t2 = time.perf_counter()
    chunked = pipeline.chunked(sampled, allocation)
    questions = [f"{QUESTION} ({i + 1})" for i in range(config.rows)]
    micro_batches = 0
    for _, inputs in backbone.batches([chunked] * config.rows, questions):
        micro_batches += 1
        backbone.generate(inputs, config.max_new_tokens)
    t3 = time.perf_counter()
    result = {
        "family": family,
        "policy": policy,
        "batching": batching,
        "visual_tokens_per_row": int(sum(allocation.tokens)),
        "vanilla_tokens_per_row": int(allocation.vanilla_tokens),
        "micro_batches": micro_batches,
        "params": sum(p.numel() for p in model.parameters()),
        "weights_gib": weights_rss / GIB,
        "peak_gib": peak_rss_bytes() / GIB,
        "decode_s": t1 - t0,
        "allocate_s": t2 - t1,
        "prepare_s": t3 - t2 - clock.prefill_s - clock.generate_s - clock.vision_s,
        "vision_s": clock.vision_s,
        "prefill_s": clock.prefill_s,
        "generate_s": clock.generate_s,
        "total_s": t3 - t0,
        "probe_visual_tokens": allocation.probe.visual_tokens if allocation.probe else 0,
        "train_s": None,
    }
    if policy == "probe-train":  # after the answers' clock: its forwards are the step's own
        result["train_s"] = probe_train_step(pipeline, learned, video, request, config.rows)
        result["peak_gib"] = peak_rss_bytes() / GIB
    return result


# ------------------------------------------------------------------------------------ parent
def run_child(config: RealSizeConfig, family: str, policy: str, batching: str, video: Path) -> dict:
    """:func:`measure` in a fresh interpreter (its own peak memory); an error as ``{"error"}``."""
    spec = json.dumps(
        {"config": asdict(config), "family": family, "policy": policy, "batching": batching}
    )
    command = [sys.executable, "-m", "benchmarks.real_size", "--child", spec, "--video", str(video)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {"family": family, "policy": policy, "batching": batching, "error": last}
    return json.loads(done.stdout.strip().splitlines()[-1])


COLUMNS = (
    ("family", "<14", None), ("policy", "<9", None), ("batching", "<9", None),
    ("visual_tokens_per_row", ">7", "d"), ("micro_batches", ">3", "d"),
    ("weights_gib", ">7", ".2f"), ("peak_gib", ">7", ".2f"), ("decode_s", ">7", ".2f"),
    ("allocate_s", ">7", ".3f"), ("prepare_s", ">7", ".2f"), ("vision_s", ">7", ".2f"),
    ("prefill_s", ">7", ".2f"), ("generate_s", ">7", ".2f"), ("total_s", ">7", ".2f"),
    ("probe_visual_tokens", ">6", "d"), ("train_s", ">7", ".2f"),
)  # fmt: skip
"""Printed table: (key, alignment and width, number format)."""
HEADERS = ("family", "policy", "batching", "tokens", "mb", "weights", "peak", "decode", "alloc",
           "prepare", "vision", "prefill", "generate", "total", "probe tok", "train")  # fmt: skip


def table(results: list[dict]) -> str:
    """The measurements as a markdown table (GiB and seconds)."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in results:
        if "error" in r:
            where = f"| {r['family']} | {r['policy']} | {r['batching']} |"
            lines.append(f"{where} failed: {r['error']} |")
            continue
        cells = [
            "–" if r.get(key) is None else format(r[key], fmt) if fmt else str(r[key])
            for key, _, fmt in COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(config: RealSizeConfig) -> list[dict]:
    """Every family × policy × batching in its own child; prints the table, returns the rows."""
    start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="resadapt-real-size-") as tmp:
        video = Path(tmp) / "clip.mp4"
        seconds = config.frames / 15 + 0.5  # 30 fps source: every other frame is sampled
        write_clip(video, width=config.side, height=config.side, seconds=seconds, moving=True)
        for family in config.families:
            for policy in config.policies:
                for batching in ("batched", "budgeted"):
                    results.append(run_child(config, family, policy, batching, video))
    wall = time.perf_counter() - start
    shape = "tiny widths" if config.tiny else "published widths"
    print(
        f"{shape}, {config.text_layers} language layers, {config.vision_blocks} vision blocks, "
        f"{config.dtype}; {config.rows} rows of {config.frames} frames at {config.side}x"
        f"{config.side}; budget {config.budget:g}; --max-batch-tokens {config.max_batch_tokens}; "
        f"{torch.get_num_threads()} threads; wall {wall:.0f} s"
    )
    print(table(results))
    if config.json_out:
        Path(config.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # internal: one measurement, one JSON line on stdout
        spec, video = json.loads(argv[1]), argv[3]
        values = spec["config"] | {k: tuple(v) for k, v in spec["config"].items() if k in
                                   ("families", "policies")}  # fmt: skip
        config = RealSizeConfig(**values)
        print(json.dumps(measure(config, spec["family"], spec["policy"], spec["batching"], video)))
        return 0

    def body() -> None:
        args = cli.parse(
            argv,
            RealSizeConfig,
            prog="python -m benchmarks.real_size",
            description=__doc__.splitlines()[0],
        )
        run(cli.make(RealSizeConfig, args))

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
