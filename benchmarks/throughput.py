"""Serving throughput: requests per second and p50 / p95 latency, vLLM engine against transformers.

``python -m benchmarks.throughput [--concurrency 1,8,32] [--requests-per-client 2] [--budget 0.15]
[--policy learned] [--max-new-tokens 8] [--backbone PATH] [--vllm-url URL] [--vllm-env DIR]
[--json-out PATH]``

The same clips (the bundled examples, cycled) at the same budget for both engines: the pipeline
decodes and allocates each clip once up front, and every request then asks its question about the
clip's pre-sized chunks. C client threads each send ``--requests-per-client`` requests back to
back. transformers: the backbone in this process answers one request at a time (a lock, as one
process serves: ``generate`` per request); vLLM: the thin server (``--vllm-url``, else a local one
started from the vLLM environment) batches the requests in flight. Latency is a request's time from
submission to its whole answer (queueing included); req/s is requests ÷ the wall time of the
concurrency level. ``vllm÷tf`` divides the vLLM row's req/s by the transformers row's at the same
concurrency, in the same run. Both engines answer greedily; their answers are compared and the
share that agree is printed.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import resadapt.world  # noqa: F401 (registers the tiny backbones)
from resadapt.assets import examples
from resadapt.config import ModelConfig, Request
from resadapt.engines import VLLM, EngineConfig, make_engine
from resadapt.pipeline import load_pipeline


def prepared(pipeline, budget: float, policy: str | None) -> list[tuple]:
    """(chunked video, question, visual tokens) of every bundled example at ``budget``."""
    out = []
    for example in examples():
        request = Request(question=example["question"], budget=budget, policy=policy)
        video = pipeline.decode(example["video"], request)
        allocation = pipeline.allocate(video, request)
        out.append(
            (pipeline.chunked(video, allocation), request.question, allocation.visual_tokens)
        )
    return out


def run_level(answer, items: list[tuple], clients: int, per_client: int) -> dict:
    """C clients × ``per_client`` requests through ``answer(chunked, question) -> text``."""
    latencies: list[float] = []
    answers: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(per_client):
            chunked, question, _ = items[(c * per_client + r) % len(items)]
            start = time.perf_counter()
            text = answer(chunked, question)
            with lock:
                latencies.append(time.perf_counter() - start)
                answers.append(text)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    n = clients * per_client
    return {
        "concurrency": clients,
        "requests": n,
        "wall_s": wall,
        "req_per_s": n / wall,
        "p50_s": float(np.percentile(latencies, 50)),
        "p95_s": float(np.percentile(latencies, 95)),
        "answers": sorted(answers),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--budget", type=float, default=0.15)
    parser.add_argument("--policy", default=None, help="default: the pipeline's (learned)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--backbone", default=None, help="default: the bundled backbone")
    parser.add_argument("--vllm-url", default=None)
    parser.add_argument("--vllm-env", default=None)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    pipeline = load_pipeline(ModelConfig(backbone=args.backbone, dtype="float32"))
    items = prepared(pipeline, args.budget, args.policy)
    backbone = pipeline.backbone
    engine = make_engine(
        EngineConfig(engine=VLLM, vllm_url=args.vllm_url, vllm_env=args.vllm_env), backbone
    )
    one_at_a_time = threading.Lock()

    def transformers_answer(chunked, question) -> str:
        with one_at_a_time:
            inputs = backbone.prepare([chunked], [question])
            return backbone.generate(inputs, args.max_new_tokens)[0]

    def vllm_answer(chunked, question) -> str:
        return engine.generate(chunked, question, args.max_new_tokens).text

    for answer in (transformers_answer, vllm_answer):  # warm-up, untimed
        answer(items[0][0], items[0][1])
    rows = []
    print(
        f"backbone {backbone.name}; budget {args.budget}; visual tokens per clip "
        f"{[t for *_, t in items]}; {args.requests_per_client} requests per client"
    )
    print(
        f"{'engine':>12} {'C':>3} {'req':>4} {'req/s':>7} {'p50 s':>7} {'p95 s':>7} {'vllm÷tf':>8}"
    )
    for clients in levels:
        tf = run_level(transformers_answer, items, clients, args.requests_per_client)
        vl = run_level(vllm_answer, items, clients, args.requests_per_client)
        agree = float(np.mean([a == b for a, b in zip(tf["answers"], vl["answers"], strict=True)]))
        for name, row in (("transformers", tf), ("vllm", vl)):
            ratio = row["req_per_s"] / tf["req_per_s"]
            print(
                f"{name:>12} {clients:>3} {row['requests']:>4} {row['req_per_s']:>7.2f} "
                f"{row['p50_s']:>7.3f} {row['p95_s']:>7.3f} {ratio:>8.2f}"
            )
            rows.append({"engine": name, **{k: v for k, v in row.items() if k != "answers"}})
        print(f"{'':>12} answers that agree: {agree:.0%}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
