"""Who answers once the chunks are sized: the engine registry and the vLLM client.

Owns ``--engine`` and its fields (:class:`EngineConfig`), the table of engines, and the client of
the thin vLLM server (:mod:`resadapt.vllm_plugin.server`): the wire format of K pre-sized chunk
items with their metadata, timeouts, and one-sentence errors. Knows nothing about policies or
budgets (the pipeline sizes the chunks in front); how a local server is started is
:mod:`resadapt.vllm`.

Metadata per family (vLLM derives positions from it, as transformers does):
  * Qwen2.5-VL: chunk k's ``fps`` makes its ``second_per_grid_ts`` the seconds to the next chunk
    (the last chunk: the clip's interval); the plugin sums them into each chunk's time offset.
  * Qwen3-VL: ``frames_indices`` are the frames' true timestamps at ``fps`` 1.0, so the time text
    vLLM writes before each chunk is the chunk's true time (as :mod:`resadapt.backbone` does).
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from resadapt.backbone import Backbone, ChunkedVideo
from resadapt.cli import option
from resadapt.errors import EngineError
from resadapt.vllm import START_TIMEOUT_S, local_server

logger = logging.getLogger(__name__)

TRANSFORMERS = "transformers"
VLLM = "vllm"
REQUEST_TIMEOUT_S = 300.0
"""Default longest wait for one answer from a vLLM server, in seconds."""
MAX_CONCURRENT = 32
"""Requests a batch of answers keeps in flight at once (the server batches them)."""


@dataclass
class EngineConfig:
    """Which engine answers (ask, eval, the app and the chat share these fields)."""

    engine: str = option(
        "who answers after the pipeline has sized the chunks: transformers (in this process) or "
        "vllm (a vLLM server: --vllm-url, else one started from --vllm-env)",
        TRANSFORMERS,
        choices=lambda: tuple(ENGINES),
    )
    vllm_url: str | None = option(
        "URL of a running server (python -m resadapt.vllm serve); none: reuse the local server "
        "of this backbone, else start one from --vllm-env for this process",
        None,
    )
    vllm_env: str | None = option(
        "the vLLM environment python -m resadapt.vllm setup built (default: $RESADAPT_VLLM_ENV, "
        "else .venv-vllm in the working directory)",
        None,
    )
    vllm_timeout_s: float = option(
        "longest wait for one answer from the vLLM server, in seconds", REQUEST_TIMEOUT_S
    )
    vllm_start_timeout_s: float = option(
        "longest wait for a local vLLM server to start, in seconds", START_TIMEOUT_S
    )

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise EngineError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        for name in ("vllm_timeout_s", "vllm_start_timeout_s"):
            if not getattr(self, name) > 0:
                flag = "--" + name.replace("_", "-")
                raise EngineError(f"{flag} must be positive, got {getattr(self, name)}")


@dataclass
class Reply:
    """One answer from a vLLM server."""

    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    visual_tokens: int
    """Video placeholder tokens of the prompt vLLM ran (what its processor produced)."""
    logprobs: list[dict[int, float]] | None
    """Per generated token, the top log-probabilities by token id (when asked for)."""


def chunk_metadata(video: ChunkedVideo, family: str) -> list[dict]:
    """vLLM's metadata of every chunk item of ``video`` (see the module docstring).

    Qwen2.5-VL's offsets count from the first kept chunk: a video whose leading chunks were dropped
    (``select`` operators) is refused there, since its origin could not be carried.
    """
    f = video.timestamps.shape[1]
    interval = f / video.sample_fps
    starts = video.timestamps[:, 0]
    if family == "qwen2_5_vl":
        if abs(float(starts[0]) - float(video.origin)) > 1e-6:
            raise EngineError(
                "the vLLM engine cannot yet place Qwen2.5-VL chunks after dropped leading chunks; "
                "use --engine transformers for this policy"
            )
        seconds = [*np.diff(starts).tolist(), interval]  # (K,) to the next chunk
        return [
            {
                "fps": f / s,
                "frames_indices": list(range(f)),
                "total_num_frames": f,
                "duration": s,
                "video_backend": "resadapt",
                "do_sample_frames": False,
            }
            for s in seconds
        ]
    return [
        {
            "fps": 1.0,
            "frames_indices": [float(t) for t in times],
            "total_num_frames": f,
            "duration": float(times[-1] - times[0]) + 1.0 / video.sample_fps,
            "video_backend": "resadapt",
            "do_sample_frames": False,
        }
        for times in video.timestamps
    ]


def request_body(
    backbone: Backbone,
    video: ChunkedVideo,
    question: str,
    max_new_tokens: int,
    logprobs: int | None = None,
    history: Sequence[tuple[str, str]] = (),
) -> dict:
    """The server request of one question: the prompt as :meth:`Backbone.prepare` writes it (K
    video placeholders where the template puts the video; a chat's earlier ``history`` turns as
    text before it) and the K chunks, losslessly."""
    token = backbone.processor.video_token
    text = backbone.prompt(question, history)
    assert text.count(token) == 1, "the chat template must place one video"
    videos = [
        {
            "shape": list(chunk.shape),  # (F, h_k, w_k, 3)
            "frames": base64.b64encode(np.ascontiguousarray(chunk, dtype=np.uint8)).decode(),
            "metadata": meta,
        }
        for chunk, meta in zip(video.chunks, chunk_metadata(video, backbone.family), strict=True)
    ]
    return {
        "prompt": text.replace(token, token * len(video.chunks)),
        "videos": videos,
        "max_tokens": max_new_tokens,
        "logprobs": logprobs,
        # the checkpoint's own, as the transformers engine's greedy decoding keeps it
        "repetition_penalty": float(
            getattr(backbone.model.generation_config, "repetition_penalty", None) or 1.0
        ),
        # the frames are at their final sizes already (resadapt.geometry made them)
        "mm_processor_kwargs": {"do_resize": False},
    }


class VllmEngine:
    """A client of one thin vLLM server (:mod:`resadapt.vllm_plugin.server`) for ``backbone``
    (whose prompt and processor write the requests; None for a client that only calls
    :meth:`health`).

    ``alive``, when given, says why the server process is gone (a local server that died), or
    None while it runs; it turns a refused connection into that sentence.
    """

    name = VLLM

    def __init__(
        self,
        url: str,
        backbone: Backbone | None,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        alive: Callable[[], str | None] | None = None,
        owner=None,
    ):
        self.url = url.rstrip("/")
        self.backbone = backbone
        self.timeout_s = timeout_s
        self.alive = alive
        self.owner = owner
        """The local server this engine started (kept alive as long as the engine), or None."""

    def call(self, route: str, body: dict | None = None, timeout_s: float | None = None) -> dict:
        """One HTTP call; every failure is an EngineError of one sentence."""
        timeout_s = timeout_s or self.timeout_s
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + route, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error") or str(e)
            except ValueError:
                message = str(e)
            raise EngineError(
                f"the vLLM server at {self.url} refused the request: {message}"
            ) from e
        except TimeoutError as e:
            raise EngineError(
                f"the vLLM server at {self.url} gave no answer within {timeout_s:g} s"
            ) from e
        except (urllib.error.URLError, ConnectionError) as e:
            gone = self.alive() if self.alive is not None else None
            why = gone or f"{getattr(e, 'reason', e)}"
            raise EngineError(f"the vLLM server at {self.url} cannot be reached: {why}") from e

    def health(self, timeout_s: float = 5.0) -> dict:
        """The server's ``/health`` answer (its model)."""
        return self.call("/health", timeout_s=timeout_s)

    def generate(
        self,
        video: ChunkedVideo,
        question: str,
        max_new_tokens: int,
        logprobs: int | None = None,
        history: Sequence[tuple[str, str]] = (),
    ) -> Reply:
        """Greedy answer of one question about the pre-sized chunks of ``video`` (after a chat's
        earlier ``history`` turns)."""
        body = request_body(self.backbone, video, question, max_new_tokens, logprobs, history)
        out = self.call("/generate", body)
        video_id = self.backbone.processor.tokenizer.convert_tokens_to_ids(
            self.backbone.processor.video_token
        )
        return Reply(
            text=out["text"].strip(),
            token_ids=out["token_ids"],
            prompt_token_ids=out["prompt_token_ids"],
            visual_tokens=sum(1 for t in out["prompt_token_ids"] if t == video_id),
            logprobs=None
            if out["logprobs"] is None
            else [{int(k): v for k, v in step.items()} for step in out["logprobs"]],
        )

    def generate_many(
        self, videos: list[ChunkedVideo], questions: list[str], max_new_tokens: int
    ) -> list[Reply]:
        """Answers of B questions, sent concurrently (the server batches them), in order."""
        with ThreadPoolExecutor(max_workers=min(MAX_CONCURRENT, max(1, len(videos)))) as pool:
            return list(
                pool.map(
                    lambda vq: self.generate(vq[0], vq[1], max_new_tokens),
                    zip(videos, questions, strict=True),
                )
            )


def vllm_engine(config: EngineConfig, backbone: Backbone) -> VllmEngine:
    """The vLLM engine of ``config``: ``--vllm-url``, else the local server of this backbone."""
    if config.vllm_url:
        engine = VllmEngine(config.vllm_url, backbone, timeout_s=config.vllm_timeout_s)
        served = engine.health(timeout_s=min(30.0, config.vllm_timeout_s)).get("model")
        logger.info("answering with the vLLM server at %s (model %s)", config.vllm_url, served)
        return engine
    server = local_server(config, backbone)
    return VllmEngine(
        server.url, backbone, timeout_s=config.vllm_timeout_s, alive=server.why_gone, owner=server
    )


ENGINES: dict[str, Callable[[EngineConfig, Backbone], VllmEngine | None]] = {
    TRANSFORMERS: lambda config, backbone: None,  # the pipeline's own backbone answers
    VLLM: vllm_engine,
}
"""Engine name → builder of the remote engine (None: the in-process transformers backbone)."""


def make_engine(config: EngineConfig, backbone: Backbone) -> VllmEngine | None:
    """The configured engine for ``backbone`` (None for transformers)."""
    return ENGINES[config.engine](config, backbone)
