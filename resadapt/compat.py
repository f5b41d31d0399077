"""Allocator ↔ backbone compatibility: the backbone's signature, stamping it into an allocator's
config, and refusing an allocator trained against another backbone.

Owns what "the same backbone" means (model type, patch factor, frames per chunk, the tokenizer's
vocabulary, the chat template and a fingerprint of the weights — the name or path is only shown)
and the one-sentence refusal.
Knows nothing about how allocators are trained or run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any

from allocator import AllocatorConfig
from allocator.config import OPTIONAL_SIGNATURE_FIELDS, SIGNATURE_FIELDS
from resadapt.backbone import Backbone, weights_fingerprint
from resadapt.errors import PolicyError
from resadapt.policies import check_fit

logger = logging.getLogger(__name__)

OVERRIDE_FLAG = "--allow-mismatched-allocator"
"""The command-line flag that runs a mismatched allocator anyway (ModelConfig field)."""
FIELD_NAMES = {
    "backbone_model_type": "model type",
    "backbone_patch_factor": "patch factor",
    "frames_per_chunk": "frames per chunk",
    "backbone_vocab_size": "vocabulary size",
    "backbone_vocab_sha256": "vocabulary",
    "backbone_chat_template_sha256": "chat template",
    "backbone_weights_sha256": "weights",
}
"""How a signature field is named in a refusal."""


def _sha256(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def backbone_signature(backbone: Backbone) -> dict[str, Any]:
    """The AllocatorConfig fields that record ``backbone``: its name and its signature
    (:data:`allocator.config.SIGNATURE_FIELDS`)."""
    tokenizer = backbone.tokenizer
    vocab = sorted(tokenizer.get_vocab().items())  # [(token, id)] sorted by token
    template = backbone.processor.chat_template or tokenizer.chat_template
    return {
        "backbone": backbone.name,
        "backbone_model_type": backbone.family,
        "backbone_patch_factor": backbone.geometry.factor,
        "frames_per_chunk": backbone.geometry.frames_per_chunk,
        "backbone_vocab_size": len(vocab),
        "backbone_vocab_sha256": _sha256(vocab),
        "backbone_chat_template_sha256": _sha256(template) if template is not None else None,
        "backbone_weights_sha256": weights_fingerprint(backbone),
    }


def stamp(
    config: AllocatorConfig, backbone: Backbone, probe_model: Backbone | None = None
) -> AllocatorConfig:
    """``config`` with ``backbone``'s signature recorded (the trainer stamps before training), and
    for a probe head run by another checkpoint (``probe_model``) that checkpoint's name and weights
    fingerprint (``probe_backbone``, ``probe_weights_sha256``).

    Raises PolicyError when the allocator's chunks hold another number of frames than the
    backbone's, or when its learned query table has fewer rows than the backbone's vocabulary and
    folding was not chosen (query_id_folding): those are architecture, not metadata.
    """
    check_fit(config, backbone.geometry.frames_per_chunk, "the allocator")
    signature = backbone_signature(backbone)
    vocab = signature["backbone_vocab_size"]
    if (
        config.query_encoder == "learned"
        and config.thumb_encoder != "probe"  # a probe head reads no query table
        and config.vocab_size < vocab
        and not config.query_id_folding
    ):
        raise PolicyError(
            f"the allocator's query table has {config.vocab_size:,} rows but backbone "
            f"{backbone.name}'s tokenizer has {vocab:,} tokens; set vocab_size to at least {vocab} "
            "or query_id_folding to true (hash ids into the table)"
        )
    if probe_model is not None:
        signature = {
            **signature,
            "probe_backbone": probe_model.name,
            "probe_weights_sha256": weights_fingerprint(probe_model),
        }
    return dataclasses.replace(config, **signature)


def mismatches(config: AllocatorConfig, backbone: Backbone) -> list[str] | None:
    """Signature fields on which ``config`` and ``backbone`` differ ([] when they match), or None
    when the allocator records no backbone."""
    recorded = config.signature
    if recorded is None:
        return None
    actual = backbone_signature(backbone)
    return [
        name
        for name in SIGNATURE_FIELDS
        if recorded[name] != actual[name]
        and not (name in OPTIONAL_SIGNATURE_FIELDS and None in (recorded[name], actual[name]))
    ]


def _describe(name: str, values: dict[str, Any]) -> str:
    vocab = values.get("backbone_vocab_size")
    vocab_text = f"{vocab:,} tokens" if vocab is not None else "not recorded"
    return (
        f"{name} ({values.get('backbone_model_type')}, vocabulary {vocab_text}, patch factor "
        f"{values.get('backbone_patch_factor')})"
    )


def check(
    config: AllocatorConfig, backbone: Backbone, path: str, *, allow_mismatched: bool = False
) -> str | None:
    """None when the allocator at ``path`` was trained against ``backbone``; otherwise raise
    PolicyError in one sentence naming both sides, or, with ``allow_mismatched``, log and return
    that sentence as a warning (the caller shows it with the result)."""
    differ = mismatches(config, backbone)
    if differ == []:
        if None in (config.backbone_weights_sha256, weights_fingerprint(backbone)):
            logger.warning(
                "allocator %s matches backbone %s on its tokenizer and template, but the weights "
                "could not be compared (%s)",
                path,
                backbone.name,
                "the allocator records no weights fingerprint"
                if config.backbone_weights_sha256 is None
                else "the backbone's embeddings are not materialised",
            )
        return None
    actual = backbone_signature(backbone)
    if differ is None:
        problem = (
            f"allocator {path} records no backbone it was trained against (it was saved before "
            f"allocators were stamped), so it cannot be checked against "
            f"{_describe(backbone.name, actual)}"
        )
    else:
        what = ", ".join(FIELD_NAMES[name] for name in differ)
        trained = _describe(config.backbone or "an unnamed backbone", config.to_dict())
        problem = (
            f"allocator {path} was trained against {trained} but the backbone is "
            f"{_describe(backbone.name, actual)}; they differ in {what}"
        )
    if not allow_mismatched:
        raise PolicyError(
            f"{problem} — use an allocator trained against this backbone, or pass {OVERRIDE_FLAG} "
            "to run it anyway"
        )
    warning = f"{problem}; running it anyway ({OVERRIDE_FLAG}), its scales may be meaningless"
    logger.warning("%s", warning)
    return warning


def matches(config: AllocatorConfig, backbone: Backbone) -> bool:
    """True when the allocator records ``backbone``'s signature."""
    return mismatches(config, backbone) == []
