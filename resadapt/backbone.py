"""The frozen Qwen-VL backbone: loading, one video item per chunk, answering and answer scoring.

Owns how chunked frames become model inputs (prompt text, per-chunk grids, true timestamps, 3-D
position ids) for Qwen2.5-VL and Qwen3-VL. Knows nothing about policies, budgets or training.

Layout: the K chunks of a video are K video items (each its own ``video_grid_thw`` row) whose
placeholders stand contiguously where the chat template puts the one video, so at a uniform scale
the token sequence is exactly the model's native single-video sequence.
  * Qwen2.5-VL: transformers' stock rope index restarts the temporal position at every video item,
    so the position ids are computed from the chunks' real timestamps
    (:func:`resadapt.positions.chunked_position_ids`), with the native single-video arithmetic.
  * Qwen3-VL: each chunk's placeholder carries its own timestamp text; the chunk metadata makes the
    processor write the chunk's true (container) timestamp, and the stock rope index is correct.
Frames reach the processor already at their chunk's size (``do_resize=False``): every size comes
from :mod:`resadapt.geometry`, so the predicted token counts are the ones the processor produces.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)
from transformers.video_utils import VideoMetadata

from resadapt.errors import BackboneError
from resadapt.geometry import Geometry
from resadapt.positions import chunked_position_ids
from resadapt.registry import backbone_builder
from resadapt.video import resize_frames

logger = logging.getLogger(__name__)

FAMILIES = ("qwen2_5_vl", "qwen3_vl")
DEFAULT_MIN_TOKENS = 1
"""Smallest chunk size a policy may choose, in visual tokens (one merged patch)."""
MAX_FRAME_TOKENS = 768
"""Default per-frame cap in visual tokens (qwen-vl-utils' video default). Qwen3-VL processors
keep a whole-video pixel budget in ``size["longest_edge"]``: that alone is no frame cap."""
ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")
"""Attention kernels a backbone may run (flash_attention_2 needs the flash-attn package)."""
STREAM_TIMEOUT_S = 120.0
"""Default longest wait for the next streamed piece of an answer, in seconds, before the stream
ends with an error (a stuck or crashed generation never hangs a request)."""
GREEDY_NEUTRAL = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}
"""Sampling knobs of a greedy call: transformers' defaults, so greedy draws no warning and no unset
knob is filled from the checkpoint (transformers 5 fills None values from it)."""
GENERATION_THREAD = "resadapt-generate"
"""Name of :meth:`Backbone.stream`'s generation thread."""
CHUNK_MARKER_TOKENS = 8
"""Text tokens a chunk adds besides its visual tokens (vision start/end, a timestamp), at most."""
STOP_JOIN_S = 10.0
"""Longest wait for a stopped generation thread to finish, in seconds (one decoding step)."""
DEFAULT_MAX_BATCH_TOKENS = {"cpu": 16_384, "cuda": 131_072}
"""Default micro-batch budget by device type, in prompt tokens (rows × longest padded row): a
micro-batch's activations and key/value cache stay bounded by it whatever the batch size or frame
count. 128k prompt tokens of a 7B Qwen-VL in bf16 is ~7 GB of KV cache, leaving an 80 GB GPU room
for the weights and the prefill's activations; devices not listed use the CPU's value."""


@dataclass
class ChunkedVideo:
    """The frames of one video grouped into temporal chunks, each at its own size."""

    chunks: list[np.ndarray]
    """K arrays, chunk k of shape (F, h_k, w_k, 3) uint8 RGB; F = frames per chunk."""
    timestamps: np.ndarray
    """(K, F) float seconds of every frame, from the container."""
    sample_fps: float
    """True sampling rate of the frames (frames per second)."""
    origin: float | None = None
    """Time (seconds) Qwen2.5-VL's temporal positions count from: the video's first sampled frame
    when chunks were dropped before it (``keyframes``), so kept chunks keep their true temporal
    positions; None: the first chunk's first frame."""

    def __post_init__(self) -> None:
        assert len(self.chunks) == len(self.timestamps) > 0
        assert self.sample_fps > 0, self.sample_fps
        if self.origin is None:
            self.origin = float(self.timestamps[0, 0])

    @classmethod
    def from_frames(
        cls,
        frames: np.ndarray,
        timestamps: np.ndarray,
        sample_fps: float,
        sizes: list[tuple[int, int]],
        frames_per_chunk: int,
        keep: list[bool] | None = None,
    ) -> ChunkedVideo:
        """Chunk k = frames [k F, (k + 1) F) of ``frames`` (T, H, W, 3) resized to ``sizes[k]``;
        timestamps (T,) seconds. Frames past the K = len(sizes) whole chunks are left out, and so
        is every chunk k with ``keep[k]`` False (its neighbours keep their true times)."""
        f = frames_per_chunk
        keep = keep if keep is not None else [True] * len(sizes)
        kept = [k for k in range(len(sizes)) if keep[k]]
        assert kept, "at least one chunk must be kept"
        chunks = [resize_frames(frames[k * f : (k + 1) * f], sizes[k]) for k in kept]
        times = np.asarray(timestamps)[: len(sizes) * f].reshape(len(sizes), f)[kept]  # (K', F)
        origin = float(np.asarray(timestamps)[0])
        return cls(chunks=chunks, timestamps=times, sample_fps=sample_fps, origin=origin)


def micro_batches(lengths: list[int], max_batch_tokens: int) -> list[list[int]]:
    """Consecutive row indices grouped so that rows × longest row ≤ ``max_batch_tokens``.

    ``lengths`` (B,) prompt tokens per row. Rows are left-padded to the longest of their batch, so
    that product is what a micro-batch holds; a row longer than the budget is a batch of its own.
    Order is kept: concatenating the batches gives ``range(B)``.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        if current and max(longest, n) * (len(current) + 1) > max_batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches


def default_max_batch_tokens(device: str | torch.device) -> int:
    """The micro-batch token budget of a device type (:data:`DEFAULT_MAX_BATCH_TOKENS`)."""
    kind = torch.device(device).type
    return DEFAULT_MAX_BATCH_TOKENS.get(kind, DEFAULT_MAX_BATCH_TOKENS["cpu"])


class _StopFlag(StoppingCriteria):
    """Stops ``generate`` at the next step once :attr:`event` is set (a request that went away)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


class Backbone:
    """A frozen Qwen2.5-VL / Qwen3-VL with its processor and token geometry."""

    def __init__(
        self,
        name: str,
        model,
        processor,
        *,
        min_tokens: int = DEFAULT_MIN_TOKENS,
        max_pixels: int | None = None,
        max_batch_tokens: int | None = None,
        stream_timeout_s: float = STREAM_TIMEOUT_S,
    ):
        self.name = name
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.processor.tokenizer.padding_side = "left"
        self.family = model.config.model_type
        if self.family not in FAMILIES:
            raise BackboneError(
                f"{name!r} is a {self.family!r} model; supported families: {', '.join(FAMILIES)}"
            )
        vision = model.config.vision_config
        factor = vision.patch_size * vision.spatial_merge_size
        self.geometry = Geometry(
            factor=factor,
            min_pixels=min_tokens * factor * factor,
            max_pixels=max_pixels
            or min(
                int(processor.video_processor.size["longest_edge"]),
                MAX_FRAME_TOKENS * factor * factor,
            ),
            frames_per_chunk=vision.temporal_patch_size,
        )
        self.max_batch_tokens = max_batch_tokens or default_max_batch_tokens(self.device)
        """Micro-batch budget of :meth:`batches`, in prompt tokens (rows × longest row)."""
        self.stream_timeout_s = stream_timeout_s
        """Longest wait of :meth:`stream` for the next piece of an answer, in seconds."""

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        name_or_path: str,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        max_pixels: int | None = None,
        min_tokens: int = DEFAULT_MIN_TOKENS,
        attn_implementation: str = "sdpa",
        device_map: str | None = None,
        max_batch_tokens: int | None = None,
        stream_timeout_s: float = STREAM_TIMEOUT_S,
    ) -> Backbone:
        """Load a backbone registered by name (:mod:`resadapt.registry`), else a checkpoint from
        a local folder or hub id.

        ``dtype``: float32, bfloat16, float16, or checkpoint (the checkpoint's own).
        ``max_pixels`` sets the per-frame pixel cap (the base, full-resolution size); by default it
        is the processor's, at most ``MAX_FRAME_TOKENS`` tokens' worth. ``device_map="auto"``
        spreads a checkpoint over the visible devices with accelerate (the model is then not moved;
        a model built in code has one device and goes to ``device``).
        """
        check_attn_implementation(attn_implementation)
        build = backbone_builder(name_or_path)
        if build is not None:
            model, processor = build()
            if dtype != "checkpoint":
                model = model.to(_dtype(dtype))
            model.set_attn_implementation(attn_implementation)
            model = model.to(device)
        else:
            local = os.path.isdir(name_or_path)
            placement = {"device_map": device_map} if device_map else {}
            try:
                model = AutoModelForImageTextToText.from_pretrained(
                    name_or_path,
                    dtype=_dtype(dtype),
                    attn_implementation=attn_implementation,
                    trust_remote_code=False,
                    use_safetensors=True,
                    **placement,
                )
                processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=False)
            except (OSError, ValueError) as e:
                where = "local folder" if local else "hub id (no local folder of that name)"
                raise BackboneError(
                    f"cannot load backbone {name_or_path!r} as a {where}: {str(e).splitlines()[0]}"
                ) from e
            if not device_map:
                model = model.to(device)
        return cls(
            name_or_path,
            model,
            processor,
            min_tokens=min_tokens,
            max_pixels=max_pixels,
            max_batch_tokens=max_batch_tokens,
            stream_timeout_s=stream_timeout_s,
        )

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings (the first of a device map)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    # ------------------------------------------------------------------ inputs
    def prompt(self, question: str, history: Sequence[tuple[str, str]] = ()) -> str:
        """The chat-templated user turn with one video placeholder, ending in the assistant cue.

        ``history``: earlier (question, answer) turns of a chat, as text turns before it; the one
        video stays in the last user turn (see :func:`history_messages`).
        """
        messages = [
            *history_messages(history),
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]},
        ]
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def prepare(
        self,
        videos: list[ChunkedVideo],
        questions: list[str],
        answers: list[str] | None = None,
        histories: list[Sequence[tuple[str, str]]] | None = None,
    ) -> BatchFeature:
        """Model inputs for B (video, question[, answer]) rows, left-padded.

        ``histories[b]``: row b's earlier chat turns as text (:meth:`prompt`); none by default.

        Returns a BatchFeature with input_ids / attention_mask / mm_token_type_ids (B, L),
        pixel_values_videos, video_grid_thw (sum K, 3) and position_ids (4, B, L) for Qwen2.5-VL.
        With ``answers``, each row ends with the answer and the end-of-turn token (teacher forcing).
        """
        assert len(videos) == len(questions)
        video_token = self.processor.video_token
        texts, items, metadata = [], [], []
        for b, (video, question) in enumerate(zip(videos, questions, strict=True)):
            text = self.prompt(question, histories[b] if histories is not None else ())
            assert text.count(video_token) == 1, "the chat template must place one video"
            text = text.replace(video_token, video_token * len(video.chunks))
            if answers is not None:
                text += answers[b] + self.tokenizer.eos_token
            texts.append(text)
            for chunk, times in zip(video.chunks, video.timestamps, strict=True):
                items.append(chunk)  # (F, h_k, w_k, 3)
                metadata.append(_chunk_metadata(chunk, times, video.sample_fps))
        inputs = self.processor(
            text=texts,
            videos=items,
            video_metadata=metadata,
            do_resize=False,
            do_sample_frames=False,
            # Frames arrive at their final size (do_resize=False), so no pixel cap applies.
            cap_pixels_per_frame=False,
            padding=True,
            return_tensors="pt",
        )
        if self.family == "qwen2_5_vl":
            second_per_grid = [self.geometry.frames_per_chunk / v.sample_fps for v in videos]
            # The processor derives each item's fps from its metadata; a chunk is one patch of the
            # clip, so the clip's true interval is set for every chunk of it.
            inputs["second_per_grid_ts"] = torch.tensor(
                [s for v, s in zip(videos, second_per_grid, strict=True) for _ in v.chunks],
                dtype=torch.float32,
            )
            offsets = [
                torch.tensor(np.round((v.timestamps[:, 0] - v.origin) / s, 3))
                for v, s in zip(videos, second_per_grid, strict=True)
            ]
            vision = self.model.config.vision_config
            seconds = torch.tensor(second_per_grid, dtype=torch.float32)
            intervals = vision.tokens_per_second * seconds  # (B,) float32, as get_rope_index
            inputs["position_ids"] = chunked_position_ids(
                inputs["input_ids"],
                inputs["mm_token_type_ids"],
                inputs["attention_mask"],
                inputs["video_grid_thw"],
                offsets,
                intervals,
                spatial_merge_size=vision.spatial_merge_size,
            )
        return inputs.to(self.device)

    def chunk_tokens(self, inputs: BatchFeature) -> list[int]:
        """Visual tokens the processor produced for every chunk item, in order."""
        merge = self.model.config.vision_config.spatial_merge_size
        return [int(t * h * w) // merge**2 for t, h, w in inputs["video_grid_thw"].tolist()]

    def row_length(self, video: ChunkedVideo, question: str, answer: str | None = None) -> int:
        """Prompt tokens of one row before padding: the templated text, every chunk's visual
        tokens and markers (vision start/end, Qwen3-VL's timestamp text), and the answer if any."""
        text = len(self.tokenizer(self.prompt(question))["input_ids"])
        visual = sum(self.geometry.tokens(c.shape[1], c.shape[2]) for c in video.chunks)
        markers = CHUNK_MARKER_TOKENS * len(video.chunks)
        return text + visual + markers + (self.answer_length(answer) if answer is not None else 0)

    def batches(
        self,
        videos: list[ChunkedVideo],
        questions: list[str],
        answers: list[str] | None = None,
        max_batch_tokens: int | None = None,
    ) -> Iterator[tuple[list[int], BatchFeature]]:
        """Prepared micro-batches of the B rows under the token budget (:func:`micro_batches`;
        default :attr:`max_batch_tokens`): (row indices, inputs), rows in order."""
        budget = max_batch_tokens or self.max_batch_tokens
        rows = range(len(videos))
        lengths = [
            self.row_length(videos[b], questions[b], None if answers is None else answers[b])
            for b in rows
        ]
        for index in micro_batches(lengths, budget):
            inputs = self.prepare(
                [videos[b] for b in index],
                [questions[b] for b in index],
                None if answers is None else [answers[b] for b in index],
            )
            yield index, inputs

    # ------------------------------------------------------------------ running
    def generation_config(
        self,
        max_new_tokens: int,
        *,
        temperature: float | None = None,
        top_p: float = 1.0,
        top_k: int = 0,
    ) -> GenerationConfig:
        """The checkpoint's generation config with this call's decoding set on purpose.

        Greedy without ``temperature`` (the sampling knobs set to their neutral values, so neither
        a warning nor the checkpoint's near-greedy top_k / top_p leaks in); sampling at
        ``temperature`` with exactly ``top_p`` (1.0: off) and ``top_k`` (0: off) otherwise. The
        checkpoint's end-of-turn ids are kept (the tokenizer's end of turn when it lists none).
        """
        config = copy.deepcopy(self.model.generation_config)
        eos = config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        config.eos_token_id = eos or [self.tokenizer.eos_token_id]
        config.pad_token_id = self.tokenizer.pad_token_id
        config.max_new_tokens = max_new_tokens
        config.max_length = None
        if temperature:
            config.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
        else:
            config.update(do_sample=False, **GREEDY_NEUTRAL)
        return config

    @torch.no_grad()
    def generate(
        self,
        inputs: BatchFeature,
        max_new_tokens: int = 32,
        *,
        temperature: float | None = None,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
    ) -> list[str]:
        """Answers for every row of ``inputs``: greedy, or sampled at ``temperature`` (with
        ``top_p`` / ``top_k``; see :meth:`generation_config`).

        Sampling draws from a torch RNG seeded by ``seed`` (forked, so the caller's RNG state is
        left as it was).
        """
        config = self.generation_config(
            max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k
        )
        device = self.device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(**inputs, generation_config=config)
        new = out[:, inputs["input_ids"].shape[1] :]
        return [s.strip() for s in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def stream(
        self, inputs: BatchFeature, max_new_tokens: int = 32, timeout_s: float | None = None
    ) -> Iterator[str]:
        """Yield the answer of a one-row ``inputs`` piece by piece as it is generated.

        Generation runs in a thread. Its exception reaches the caller as a BackboneError; a wait of
        more than ``timeout_s`` (default :attr:`stream_timeout_s`) for the next piece ends the
        stream with one; closing the generator early (a request that went away) stops generation
        at its next step and waits for the thread, so the next request starts at once.
        """
        assert inputs["input_ids"].shape[0] == 1, "streaming answers one question at a time"
        timeout_s = self.stream_timeout_s if timeout_s is None else timeout_s
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout_s
        )
        stop = _StopFlag()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.no_grad():
                    self.model.generate(
                        **inputs,
                        generation_config=self.generation_config(max_new_tokens),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([stop]),
                    )
            except Exception as e:  # noqa: BLE001 (handed to the caller below)
                failure.append(e)
                streamer.end()

        worker = threading.Thread(target=run, name=GENERATION_THREAD, daemon=True)
        worker.start()
        try:
            yield from streamer
        except queue.Empty as e:
            raise BackboneError(
                f"the backbone produced nothing for {timeout_s:g} s; the answer was abandoned"
            ) from e
        finally:
            stop.event.set()
            worker.join(STOP_JOIN_S)
        if failure:
            error = failure[0]
            first = str(error).splitlines()[0] if str(error) else ""
            raise BackboneError(
                f"the backbone failed while answering ({type(error).__name__}: {first})"
            ) from error

    def answer_length(self, answer: str) -> int:
        """Tokens :meth:`answer_logprob` scores for ``answer``: the answer and end-of-turn."""
        return len(self.tokenizer(answer + self.tokenizer.eos_token)["input_ids"])

    @torch.no_grad()
    def answer_logprob(
        self,
        videos: list[ChunkedVideo],
        questions: list[str],
        answers: list[str],
        *,
        per_token: bool = False,
        max_batch_tokens: int | None = None,
    ) -> torch.Tensor:
        """Log-probability of each answer (and its end-of-turn token) given video and question.

        Returns (B,) float32: the sum ``log p(answer | video, question)``, or with ``per_token``
        its mean over the scored tokens (the log of the per-token geometric-mean probability).
        Rows run in micro-batches under ``max_batch_tokens`` (see :meth:`batches`); only the
        answers' logits are computed.
        """
        out = torch.empty(len(answers))
        for index, inputs in self.batches(videos, questions, answers, max_batch_tokens):
            lengths = [self.answer_length(answers[b]) for b in index]
            keep = max(lengths) + 1
            logits = self.model(**inputs, logits_to_keep=keep).logits  # (b, keep, V)
            logp = torch.log_softmax(logits.float(), dim=-1)
            ids = inputs["input_ids"]
            for row, (b, n) in enumerate(zip(index, lengths, strict=True)):
                target = ids[row, -n:]  # (n,)
                pred = logp[row, -n - 1 : -1]  # (n, V) logits at t predict token t + 1
                out[b] = pred.gather(-1, target[:, None]).sum() / (n if per_token else 1)
        return out


def history_messages(history: Sequence[tuple[str, str]]) -> list[dict]:
    """Earlier (question, answer) turns as text-only chat messages, in order.

    A chat sends the video once, in its last user turn (at that turn's allocation): the earlier
    turns carry no video item, so the prompt holds exactly the visual tokens of one allocation.
    """
    messages = []
    for question, answer in history:
        messages.append({"role": "user", "content": [{"type": "text", "text": question}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def _chunk_metadata(chunk: np.ndarray, times: np.ndarray, sample_fps: float) -> VideoMetadata:
    """Metadata that makes the processor see a chunk's true timestamps.

    Qwen3-VL writes ``frames_indices / fps`` as the chunk's time text, so the indices are the
    timestamps themselves at fps 1.0 (exact for variable frame rate too).
    """
    return VideoMetadata(
        total_num_frames=len(times),
        fps=1.0,
        frames_indices=[float(t) for t in times],
        height=chunk.shape[1],
        width=chunk.shape[2],
        duration=float(times[-1] - times[0]) + 1.0 / sample_fps,
    )


def check_attn_implementation(name: str) -> None:
    """Raise BackboneError for an unknown kernel, or flash_attention_2 without flash-attn."""
    if name not in ATTN_IMPLEMENTATIONS:
        raise BackboneError(
            f"attention implementation {name!r} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise BackboneError(
            "--attn-implementation flash_attention_2 needs the flash-attn package (pip install "
            "flash-attn on a CUDA machine); use sdpa otherwise"
        )


def _dtype(name: str) -> torch.dtype | str:
    table = {"checkpoint": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}
    table["float16"] = torch.float16
    if name not in table:
        raise BackboneError(f"dtype {name!r} is not one of {', '.join(table)}")
    return table[name]


FINGERPRINT_VALUES = 65536
"""Values of the input-embedding matrix whose signs the weights fingerprint reads (strided)."""


def weights_fingerprint(backbone: Backbone) -> str | None:
    """sha256 of the signs of FINGERPRINT_VALUES values taken at an even stride through the
    language model's input embeddings, with the matrix's shape: cheap at any model size, and
    different for two trainings that share a tokenizer (the tokenizer hashes cannot tell them
    apart; a fine-tune that moves the embeddings flips the signs of the values near zero).

    Signs, not rounded values: a sign survives every cast, so a float32, bfloat16 or float16 load
    of one checkpoint agrees, where any rounding grid has values on its boundaries. None when the
    embeddings are not materialised (an offloaded ``meta`` tensor)."""
    weight = backbone.model.get_input_embeddings().weight
    if weight.device.type == "meta":
        return None
    flat = weight.detach().reshape(-1)
    sample = flat[:: max(1, flat.numel() // FINGERPRINT_VALUES)][:FINGERPRINT_VALUES]
    signs = np.packbits(torch.signbit(sample).cpu().numpy())
    return hashlib.sha256(json.dumps(list(weight.shape)).encode() + signs.tobytes()).hexdigest()
