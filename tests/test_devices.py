"""Defaults that fit the hardware: --device / --dtype auto, the attention kernel (the relevance
probe works with any), device maps, and one flag set shared by every entry point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import resadapt.world  # noqa: F401 (registers the tiny backbones)
from resadapt import cli
from resadapt.backbone import Backbone, ChunkedVideo
from resadapt.config import DeviceConfig, ModelConfig
from resadapt.errors import BackboneError
from resadapt.eval_config import EvalConfig
from resadapt.relevance import chunk_attention
from resadapt.train_config import TrainConfig

DEVICE_FIELDS = ("device", "dtype", "attn_implementation", "device_map", "max_batch_tokens")


def test_auto_dtype_follows_the_device():
    assert DeviceConfig(device="cpu").torch_dtype == "float32"
    assert DeviceConfig().dtype_on("cuda:0") == "bfloat16"
    assert DeviceConfig(dtype="checkpoint").dtype_on("cuda") == "checkpoint"
    assert DeviceConfig(dtype="float16").dtype_on("cpu") == "float16"


def test_flash_attention_without_the_package_is_one_sentence():
    with pytest.raises(BackboneError, match="needs the flash-attn package") as caught:
        DeviceConfig(attn_implementation="flash_attention_2")
    assert "\n" not in str(caught.value)


def test_every_entry_point_takes_the_device_flags():
    for cls in (ModelConfig, EvalConfig, TrainConfig):
        names = {f.name for f, _ in cli._fields([cls], ())}
        assert set(DEVICE_FIELDS) <= names, cls
    args = cli.parse(
        ["q", "--attn-implementation", "eager", "--dtype", "checkpoint", "--device-map", "auto"],
        ModelConfig,
        prog="x",
        description="x",
        extra=lambda p: p.add_argument("question"),
    )
    config = cli.make(ModelConfig, args)
    assert (config.attn_implementation, config.dtype, config.device_map) == (
        "eager",
        "checkpoint",
        "auto",
    )


def test_inputs_and_the_allocator_go_to_the_input_embeddings_device():
    backbone = Backbone.load("tiny-random-qwen2.5-vl", dtype="bfloat16")
    assert backbone.device == backbone.model.get_input_embeddings().weight.device
    assert backbone.model.dtype == torch.bfloat16


def _video(side: int) -> ChunkedVideo:
    frames = np.random.default_rng(0).integers(0, 255, (6, side, side, 3), dtype=np.uint8)
    return ChunkedVideo([frames[i : i + 2] for i in (0, 2, 4)], np.arange(6.0).reshape(3, 2), 1.0)


@pytest.mark.parametrize("name", ["tiny-random-qwen2.5-vl", "tiny-random-qwen3-vl"])
def test_the_relevance_probe_is_the_same_with_eager_and_sdpa(name):
    shares = {}
    for kernel in ("sdpa", "eager"):
        backbone = Backbone.load(name, attn_implementation=kernel)
        assert backbone.model.config.text_config._attn_implementation == kernel
        video = _video(2 * backbone.geometry.factor)
        (shares[kernel],) = chunk_attention(backbone, [video], ["Which card?"])
        assert backbone.model.config.text_config._attn_implementation == kernel  # restored
    torch.testing.assert_close(shares["eager"], shares["sdpa"], atol=1e-5, rtol=1e-4)
    assert float(shares["sdpa"].sum()) == pytest.approx(1.0)
