"""A small random allocator folder for tests (the tiny tokenizer's vocabulary, narrow widths)."""

from __future__ import annotations

from pathlib import Path

from allocator import Allocator, AllocatorConfig
from resadapt import compat
from resadapt.world.tiny import build_tokenizer


def write_tiny_allocator(path: Path, backbone=None, **overrides) -> Path:
    """Save a random allocator that reads the tiny tokenizer's ids to ``path`` (stamped with
    ``backbone``'s signature when one is given, as the trainer stamps); returns ``path``."""
    values = dict(hidden_dim=32, num_layers=1, num_heads=2, max_query_tokens=32, query_embed_dim=16)
    config = AllocatorConfig(vocab_size=len(build_tokenizer()), **(values | overrides))
    if backbone is not None:
        config = compat.stamp(config, backbone)
    Allocator(config).save_pretrained(path)
    return path
