"""The thin vLLM server: ``<vllm env>/bin/python -m resadapt.vllm_plugin.server --model PATH``.

Owns one vLLM engine (AsyncLLM: requests from many clients are batched) behind two HTTP routes:
``GET /health`` and ``POST /generate``. Runs in the separate vLLM environment and imports nothing
from the project but this package. Knows nothing about policies or budgets: a request already
holds the K chunks at their allocated sizes (raw uint8 frames, losslessly) with their metadata.

Why not vLLM's OpenAI-compatible server: its video input is a URL or an encoded file that the
server decodes and samples itself, so K pre-sized chunks would be re-encoded (lossy) and their
per-chunk ``frames_indices`` / fps (which carry the true timestamps) could not be given.

Wire format (JSON). Request: ``{"prompt": str, "videos": [{"shape": [F, H, W, 3], "frames":
base64 of the uint8 bytes, "metadata": {...}}], "max_tokens": int, "logprobs": int | null,
"repetition_penalty": float, "mm_processor_kwargs": {...}}``; decoding is greedy. Answer:
``{"text", "token_ids", "prompt_token_ids", "logprobs": [{token id: log-probability}] per
generated token (or null)}``; a refused request is HTTP 400 with ``{"error": one sentence}``.
"""

from __future__ import annotations

import argparse
import base64
import logging
import uuid

import numpy as np

logger = logging.getLogger("resadapt.vllm_plugin.server")

HEALTH_ROUTE = "/health"
GENERATE_ROUTE = "/generate"


def decode_videos(videos: list[dict]) -> list[tuple[np.ndarray, dict]]:
    """The request's videos as vLLM's ``(frames (F, H, W, 3) uint8, metadata)`` items."""
    items = []
    for video in videos:
        shape = tuple(int(n) for n in video["shape"])
        frames = np.frombuffer(base64.b64decode(video["frames"]), dtype=np.uint8).reshape(shape)
        items.append((frames, dict(video["metadata"])))
    return items


def build_app(engine, model: str):
    """The FastAPI app around a started AsyncLLM ``engine`` serving ``model``."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from vllm import SamplingParams

    app = FastAPI()

    @app.get(HEALTH_ROUTE)
    async def health() -> dict:
        return {"model": model}

    @app.post(GENERATE_ROUTE)
    async def generate(body: dict) -> JSONResponse:
        try:
            prompt = {
                "prompt": body["prompt"],
                "multi_modal_data": {"video": decode_videos(body.get("videos", []))},
                "mm_processor_kwargs": body.get("mm_processor_kwargs") or {},
            }
            params = SamplingParams(
                temperature=0.0,
                max_tokens=int(body.get("max_tokens", 32)),
                logprobs=body.get("logprobs"),
                repetition_penalty=float(body.get("repetition_penalty", 1.0)),
            )
        except (KeyError, ValueError, TypeError) as e:
            return JSONResponse({"error": f"bad request: {e}"}, status_code=400)
        final = None
        try:
            async for out in engine.generate(prompt, params, request_id=uuid.uuid4().hex):
                final = out
        except Exception as e:  # noqa: BLE001 (the engine's refusal goes back as one sentence)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            return JSONResponse({"error": f"vLLM refused the request: {first}"}, status_code=400)
        completion = final.outputs[0]
        logprobs = None
        if completion.logprobs is not None:
            logprobs = [
                {str(token): float(lp.logprob) for token, lp in step.items()}
                for step in completion.logprobs
            ]
        return JSONResponse(
            {
                "text": completion.text,
                "token_ids": list(completion.token_ids),
                "prompt_token_ids": list(final.prompt_token_ids),
                "logprobs": logprobs,
            }
        )

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resadapt.vllm_plugin.server")
    parser.add_argument("--model", required=True, help="checkpoint folder or hub id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dtype", default="auto", help="vLLM dtype (float32 on a CPU)")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-chunks", type=int, default=64, help="video items per prompt")
    parser.add_argument("--max-num-seqs", type=int, default=32, help="requests batched at once")
    parser.add_argument(
        "--kv-cache-gib",
        type=float,
        default=None,
        help="key/value cache size in GiB (default: vLLM's share of the device memory)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    import uvicorn
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = AsyncLLM.from_engine_args(
        AsyncEngineArgs(
            model=args.model,
            dtype=args.dtype,
            enforce_eager=True,
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            limit_mm_per_prompt={"video": args.max_chunks, "image": 0},
            kv_cache_memory_bytes=None
            if args.kv_cache_gib is None
            else int(args.kv_cache_gib * 2**30),
        )
    )
    try:
        uvicorn.run(
            build_app(engine, args.model), host=args.host, port=args.port, log_level="warning"
        )
    finally:
        engine.shutdown()


if __name__ == "__main__":
    main()
