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
