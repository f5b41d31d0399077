"""Named backbones: a name → builder table that ``Backbone.load`` consults before paths and hub ids.

Owns the table and the functions that fill and read it. Knows nothing about what a builder builds
or who registers: the offline world (:mod:`resadapt.world`) registers its tiny random backbones
when imported, and every entry point (the app, the ``python -m`` modules, the lmms-eval model)
imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BackboneBuilder = Callable[[], tuple[Any, Any]]
"""Builds (model, processor) of a family :class:`resadapt.backbone.Backbone` supports."""

_BUILDERS: dict[str, BackboneBuilder] = {}


def register_backbone(name: str, build: BackboneBuilder) -> None:
    """Make ``Backbone.load(name)`` call ``build()``. A name is registered once."""
    if name in _BUILDERS:
        raise ValueError(f"a backbone named {name!r} is already registered")
    _BUILDERS[name] = build


def backbone_builder(name: str) -> BackboneBuilder | None:
    """The builder registered under ``name``, or None (then the name is a path or a hub id)."""
    return _BUILDERS.get(name)


def registered_backbones() -> tuple[str, ...]:
    """Every registered name, in registration order."""
    return tuple(_BUILDERS)


NeedleSource = Callable[[Any, int, int, int, int], Any]
"""Writes needle clips: ``source(out_dir, num, seed, num_frames, size)`` → the path of a data.jsonl
whose rows carry ``evidence_frames`` (the frames showing the object the question names)."""

_NEEDLE_SOURCES: dict[str, NeedleSource] = {}


def register_needle_source(name: str, source: NeedleSource) -> None:
    """Make ``source`` available to the needle test (resadapt.needle) under ``name``, once."""
    if name in _NEEDLE_SOURCES:
        raise ValueError(f"a needle source named {name!r} is already registered")
    _NEEDLE_SOURCES[name] = source


def needle_source(name: str) -> NeedleSource | None:
    """The needle source registered under ``name``, or None."""
    return _NEEDLE_SOURCES.get(name)


def needle_sources() -> tuple[str, ...]:
    """Every registered needle source, in registration order."""
    return tuple(_NEEDLE_SOURCES)
