"""vLLM plugin (entry point ``vllm.general_plugins``): a video's chunk items on one time axis.

Owns the registration vLLM runs in every process it starts. Imports only vLLM, torch, numpy and
:mod:`resadapt.positions` (``resadapt/__init__.py`` imports nothing), so it runs in the separate
vLLM environment, where the project's own dependencies are not installed.
"""

from __future__ import annotations

QWEN2_5_VL = "Qwen2_5_VLForConditionalGeneration"
"""The architecture whose positions the plugin replaces (Qwen3-VL's need only the metadata)."""


def register() -> None:
    """Register :class:`resadapt.vllm_plugin.qwen2_5_vl.ChunkedQwen2_5_VL` under Qwen2.5-VL's
    architecture name (vLLM imports it lazily, when such a checkpoint loads)."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(QWEN2_5_VL, "resadapt.vllm_plugin.qwen2_5_vl:ChunkedQwen2_5_VL")
