"""The frozen Qwen-VL backbone: loading, one video item per chunk, answering and answer scoring.

Owns how chunked frames become model inputs (prompt text, per-chunk grids, true timestamps, 3-D
position ids) for Qwen2.5-VL and Qwen3-VL. Knows nothing about policies, budgets or training.

Layout: the K chunks of a video are K video items (each its own ``video_grid_thw`` row) whose
placeholders stand contiguously where the chat template puts the one video, so at a uniform scale
the token sequence is exactly the model's native single-video sequence.
  * Qwen2.5-VL: transformers' stock rope index restarts the temporal position at every video item,
    so the position ids are computed here from the chunks' real timestamps
    (:func:`chunked_position_ids`), with the same arithmetic as the native single-video path.
  * Qwen3-VL: each chunk's placeholder carries its own timestamp text; the chunk metadata makes the
    processor write the chunk's true (container) timestamp, and the stock rope index is correct.
Frames reach the processor already at their chunk's size (``do_resize=False``): every size comes
from :mod:`resadapt.geometry`, so the predicted token counts are the ones the processor produces.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    TextIteratorStreamer,
)
from transformers.video_utils import VideoMetadata

from resadapt.errors import BackboneError
from resadapt.geometry import Geometry
from resadapt.registry import backbone_builder
from resadapt.video import resize_frames

logger = logging.getLogger(__name__)

FAMILIES = ("qwen2_5_vl", "qwen3_vl")
DEFAULT_MIN_TOKENS = 1
"""Smallest chunk size a policy may choose, in visual tokens (one merged patch)."""
MAX_FRAME_TOKENS = 768
"""Default per-frame cap in visual tokens (qwen-vl-utils' video default). Qwen3-VL processors
keep a whole-video pixel budget in ``size["longest_edge"]``: that alone is no frame cap."""


@dataclass
class ChunkedVideo:
    """The frames of one video grouped into temporal chunks, each at its own size."""

    chunks: list[np.ndarray]
    """K arrays, chunk k of shape (F, h_k, w_k, 3) uint8 RGB; F = frames per chunk."""
    timestamps: np.ndarray
    """(K, F) float seconds of every frame, from the container."""
    sample_fps: float
    """True sampling rate of the frames (frames per second)."""

    def __post_init__(self) -> None:
        assert len(self.chunks) == len(self.timestamps) > 0
        assert self.sample_fps > 0, self.sample_fps

    @classmethod
    def from_frames(
        cls,
        frames: np.ndarray,
        timestamps: np.ndarray,
        sample_fps: float,
        sizes: list[tuple[int, int]],
        frames_per_chunk: int,
    ) -> ChunkedVideo:
        """Chunk k = frames [k F, (k + 1) F) of ``frames`` (T, H, W, 3) resized to ``sizes[k]``;
        timestamps (T,) seconds. Frames past the K = len(sizes) whole chunks are left out."""
        f = frames_per_chunk
        chunks = [
            resize_frames(frames[k * f : (k + 1) * f], size)  # (F, h_k, w_k, 3)
            for k, size in enumerate(sizes)
        ]
        times = np.asarray(timestamps)[: len(chunks) * f].reshape(len(chunks), f)  # (K, F)
        return cls(chunks=chunks, timestamps=times, sample_fps=sample_fps)


def chunked_position_ids(
    input_ids: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    video_grid_thw: torch.Tensor,
    chunk_offsets: list[torch.Tensor],
    time_intervals: torch.Tensor,
    spatial_merge_size: int,
) -> torch.Tensor:
    """Qwen2.5-VL 3-D rope positions for rows whose video tokens are K chunk items in a row.

    input_ids, mm_token_type_ids, attention_mask: (B, L); video_grid_thw: (sum_b K_b, 3) with
    t = 1 per chunk; chunk_offsets[b]: (K_b,) offset of chunk k from the row's first chunk, in units
    of one temporal patch (``(t_k - t_0) / second_per_grid``: exactly k at a constant frame rate);
    time_intervals: (B,) float32 ``tokens_per_second * second_per_grid``.
    Returns (4, B, L): row 0 the plain text positions (for the attention mask), rows 1–3 the
    temporal / height / width positions. A chunk's temporal position is
    ``start + floor(offset_k * time_interval)`` in float32, the native path's arithmetic; text after
    the video continues from ``start + max(h, w) // merge`` of the largest chunk, as natively.
    """
    batch, length = input_ids.shape
    pos = torch.zeros(4, batch, length, dtype=torch.long)
    grids = iter(video_grid_thw.tolist())
    for b in range(batch):
        keep = attention_mask[b].bool()
        types = mm_token_type_ids[b][keep].tolist()
        offsets = iter(chunk_offsets[b].float())
        rows: list[torch.Tensor] = []
        cur = 0
        i = 0
        while i < len(types):
            j = i
            while j < len(types) and types[j] == types[i]:
                j += 1
            if types[i] == 0:
                rows.append(torch.arange(cur, cur + j - i).expand(3, -1))
                cur += j - i
            else:
                assert types[i] == 2, "only video placeholders are supported"
                n, advance = 0, 0
                while n < j - i:
                    t, h, w = next(grids)
                    assert t == 1, "each chunk is one temporal patch"
                    gh, gw = h // spatial_merge_size, w // spatial_merge_size
                    t_pos = int((next(offsets) * time_intervals[b]).long())
                    hh, ww = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
                    rows.append(
                        torch.stack(
                            [
                                torch.full((gh * gw,), cur + t_pos),
                                hh.flatten() + cur,
                                ww.flatten() + cur,
                            ]
                        )
                    )
                    n += gh * gw
                    advance = max(advance, max(h, w) // spatial_merge_size)
                assert n == j - i, "video tokens do not match the chunk grids"
                cur += advance
            i = j
        positions = torch.cat(rows, dim=1)  # (3, L_b)
        pos[1:, b, keep] = positions
        pos[0, b, keep] = torch.arange(int(keep.sum()))
    return pos


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
    ) -> Backbone:
        """Load a backbone registered by name (:mod:`resadapt.registry`), else a checkpoint from
        a local folder or hub id.

        ``max_pixels`` sets the per-frame pixel cap (the base, full-resolution size); by default it
        is the processor's, at most ``MAX_FRAME_TOKENS`` tokens' worth.
        """
        build = backbone_builder(name_or_path)
        if build is not None:
            model, processor = build()
        else:
            local = os.path.isdir(name_or_path)
            try:
                model = AutoModelForImageTextToText.from_pretrained(
                    name_or_path, dtype=_dtype(dtype), trust_remote_code=False, use_safetensors=True
                )
                processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=False)
            except (OSError, ValueError) as e:
                where = "local folder" if local else "hub id (no local folder of that name)"
                raise BackboneError(
                    f"cannot load backbone {name_or_path!r} as a {where}: {str(e).splitlines()[0]}"
                ) from e
        model = model.to(device)
        return cls(name_or_path, model, processor, min_tokens=min_tokens, max_pixels=max_pixels)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    # ------------------------------------------------------------------ inputs
    def prompt(self, question: str) -> str:
        """The chat-templated user turn with one video placeholder, ending in the assistant cue."""
        messages = [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}
        ]
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def prepare(
        self,
        videos: list[ChunkedVideo],
        questions: list[str],
        answers: list[str] | None = None,
    ) -> BatchFeature:
        """Model inputs for B (video, question[, answer]) rows, left-padded.

        Returns a BatchFeature with input_ids / attention_mask / mm_token_type_ids (B, L),
        pixel_values_videos, video_grid_thw (sum K, 3) and position_ids (4, B, L) for Qwen2.5-VL.
        With ``answers``, each row ends with the answer and the end-of-turn token (teacher forcing).
        """
        assert len(videos) == len(questions)
        video_token = self.processor.video_token
        texts, items, metadata = [], [], []
        for b, (video, question) in enumerate(zip(videos, questions, strict=True)):
            text = self.prompt(question)
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
                torch.tensor(np.round((v.timestamps[:, 0] - v.timestamps[0, 0]) / s, 3))
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

    # ------------------------------------------------------------------ running
    @torch.no_grad()
    def _generate_kwargs(
        self, inputs: BatchFeature, max_new_tokens: int, temperature: float | None = None
    ) -> dict:
        eos = [self.tokenizer.eos_token_id]
        sampling = {"do_sample": True, "temperature": temperature} if temperature else {}
        return {
            **inputs,
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "eos_token_id": eos,
            "pad_token_id": self.tokenizer.pad_token_id,
            **sampling,
        }

    @torch.no_grad()
    def generate(
        self,
        inputs: BatchFeature,
        max_new_tokens: int = 32,
        *,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> list[str]:
        """Answers for every row of ``inputs``: greedy, or sampled at ``temperature``.

        Sampling draws from a torch RNG seeded by ``seed`` (forked, so the caller's RNG state is
        left as it was).
        """
        kwargs = self._generate_kwargs(inputs, max_new_tokens, temperature)
        device = self.device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(**kwargs)
        new = out[:, inputs["input_ids"].shape[1] :]
        return [s.strip() for s in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def stream(self, inputs: BatchFeature, max_new_tokens: int = 32) -> Iterator[str]:
        """Yield the answer of a one-row ``inputs`` piece by piece as it is generated."""
        assert inputs["input_ids"].shape[0] == 1, "streaming answers one question at a time"
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = self._generate_kwargs(inputs, max_new_tokens) | {"streamer": streamer}
        worker = threading.Thread(target=_generate_no_grad, args=(self.model, kwargs), daemon=True)
        worker.start()
        yield from streamer
        worker.join()

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
    ) -> torch.Tensor:
        """Log-probability of each answer (and its end-of-turn token) given video and question.

        Returns (B,) float32: the sum ``log p(answer | video, question)``, or with ``per_token``
        its mean over the scored tokens (the log of the per-token geometric-mean probability).
        """
        inputs = self.prepare(videos, questions, answers)
        logp = torch.log_softmax(self.model(**inputs).logits.float(), dim=-1)  # (B, L, V)
        ids = inputs["input_ids"]
        out = torch.empty(len(answers))
        for b, answer in enumerate(answers):
            n = self.answer_length(answer)
            target = ids[b, -n:]  # (n,)
            pred = logp[b, -n - 1 : -1]  # (n, V) logits at t predict token t + 1
            out[b] = pred.gather(-1, target[:, None]).sum() / (n if per_token else 1)
        return out


def _generate_no_grad(model, kwargs: dict) -> None:
    with torch.no_grad():
        model.generate(**kwargs)


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


def _dtype(name: str) -> torch.dtype | str:
    table = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}
    table["float16"] = torch.float16
    if name not in table:
        raise BackboneError(f"dtype {name!r} is not one of {', '.join(table)}")
    return table[name]
