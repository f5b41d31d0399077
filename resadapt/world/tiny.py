"""Tiny Qwen2.5-VL / Qwen3-VL backbones built in code: the real transformers classes, small configs.

Owns the tiny configs (one code path; the two families differ only in the rows of ``FAMILIES``),
the locally trained byte-level tokenizer and the chat template, so tests and smoke runs need no
network. Knows nothing about allocation, budgets or training loops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from resadapt.world import TINY_BACKBONES

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The Qwen-VL chat layout without the default system turn (short prompts keep tiny models fast),
# with one difference: a turn's text comes before its images and videos, so that under causal
# attention every visual token can already see the question (which card it asks about). Real
# checkpoints keep their own templates.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text the byte-level BPE merges are learned from: the words tiny-world questions and answers use.
_CORPUS = [
    "Which digit is on the red card? What is the stripe direction on the green card?",
    "Answer with the option's letter from the given choices directly. A. B. C. D. E.",
    "horizontal vertical diagonal anti-diagonal red green blue yellow purple orange white cyan",
    "When does the blue card appear? Give the start and end in seconds.",
    "How many cards appear in the video? Describe the video. What happens?",
    "0 1 2 3 4 5 6 7 8 9 10 0.5 1.0 1.5 2.0 seconds yes no the a of in is on",
]


def build_tokenizer(
    vocab_size: int = 512, corpus: list[str] | None = None
) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer with the Qwen-VL special tokens (no download).

    ``corpus`` (default: a few lines of video-question words) is the text the merges are learned
    from; a tokenizer for a trained tiny backbone learns them from its task's prompts.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((corpus or _CORPUS) * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


def mrope_section(head_dim: int) -> list[int]:
    """Split of the rotary half-dimension into (time, height, width), in Qwen's 1 : 1.5 : 1.5."""
    hw = 3 * head_dim // 16
    return [head_dim // 2 - 2 * hw, hw, hw]


SPATIAL_MERGE = 2
"""Patches merged per token side, in both families."""
TEMPORAL_PATCH = 2
"""Frames per temporal patch, in both families."""
DEFAULT_SIDE_TOKENS = 6
"""Default frame side in tokens: the processors' max_pixels is (6 · patch · merge)²."""


@dataclass(frozen=True)
class Family:
    """What differs between the tiny Qwen2.5-VL and Qwen3-VL; the rest is one code path."""

    config: type
    model: type
    processor: type
    video_processor: type
    patch_size: int
    """Pixels per patch side: a token covers patch_size × SPATIAL_MERGE pixels on a side."""
    text: Callable[[int], dict]
    """Family-only text-config entries, given the head dimension."""
    rope: dict
    """Family-only rope parameters."""
    vision: Callable[[int], dict]
    """Family-only vision-config entries, given the vision depth."""


QWEN2_5_VL, QWEN3_VL = TINY_BACKBONES
FAMILIES: dict[str, Family] = {
    QWEN2_5_VL: Family(
        config=Qwen2_5_VLConfig,
        model=Qwen2_5_VLForConditionalGeneration,
        processor=Qwen2_5_VLProcessor,
        video_processor=Qwen2VLVideoProcessor,
        patch_size=14,
        text=lambda head_dim: {},
        rope={},
        vision=lambda depth: {
            "window_size": 56,
            "fullatt_block_indexes": [depth - 1],
            "tokens_per_second": 2,
        },
    ),
    QWEN3_VL: Family(
        config=Qwen3VLConfig,
        model=Qwen3VLForConditionalGeneration,
        processor=Qwen3VLProcessor,
        video_processor=Qwen3VLVideoProcessor,
        patch_size=16,
        text=lambda head_dim: {"head_dim": head_dim},
        rope={"mrope_interleaved": True},
        vision=lambda depth: {"num_position_embeddings": 144, "deepstack_visual_indexes": [0]},
    ),
}
"""The tiny families by backbone name (keys: :data:`resadapt.world.TINY_BACKBONES`)."""


def vision_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """The model config's ids of the image, video and vision start / end tokens in ``tokenizer``."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def build_tiny(
    name: str,
    seed: int = 0,
    *,
    hidden: int = 64,
    layers: int = 2,
    vision_depth: int = 2,
    heads: int = 4,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A random tiny backbone of the family ``name`` (in :data:`FAMILIES`) and its processor.

    Tokens are patch × merge pixels on a side (28 for Qwen2.5-VL, 32 for Qwen3-VL); the
    processor's pixel bounds default to one token (``min_pixels``) and a square of
    ``DEFAULT_SIDE_TOKENS`` tokens on a side (``max_pixels``).
    """
    if name not in FAMILIES:
        raise KeyError(f"unknown tiny backbone {name!r}; choose one of {', '.join(FAMILIES)}")
    family = FAMILIES[name]
    factor = family.patch_size * SPATIAL_MERGE
    if max_pixels is None:
        max_pixels = (DEFAULT_SIDE_TOKENS * factor) ** 2
    if min_pixels is None:
        min_pixels = factor * factor
    tokenizer = tokenizer or build_tokenizer()
    head_dim = hidden // heads
    config = family.config(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": max(1, heads // 2),
            **family.text(head_dim),
            "max_position_embeddings": 8192,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": mrope_section(head_dim),
                **family.rope,
            },
            "bos_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_heads": heads,
            "patch_size": family.patch_size,
            "spatial_merge_size": SPATIAL_MERGE,
            "temporal_patch_size": TEMPORAL_PATCH,
            "out_hidden_size": hidden,
            **family.vision(vision_depth),
        },
        tie_word_embeddings=True,
        **vision_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    model = family.model(config).eval()
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    kw = {
        "patch_size": family.patch_size,
        "merge_size": SPATIAL_MERGE,
        "temporal_patch_size": TEMPORAL_PATCH,
        "size": size,
    }
    processor = family.processor(
        image_processor=Qwen2VLImageProcessor(**kw),
        video_processor=family.video_processor(**kw),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def build_tiny_qwen2_5_vl(seed: int = 0, **kwargs) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A random tiny Qwen2.5-VL (patch 14 × merge 2 = 28-px tokens): :func:`build_tiny`."""
    return build_tiny(QWEN2_5_VL, seed, **kwargs)


def build_tiny_qwen3_vl(seed: int = 0, **kwargs) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A random tiny Qwen3-VL (patch 16 × merge 2 = 32-px tokens): :func:`build_tiny`."""
    return build_tiny(QWEN3_VL, seed, **kwargs)
