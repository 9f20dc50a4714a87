"""The two servers under test, each started as a child process on a loopback port."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from engine_bridge.cpu_tuning import preload_env
from engine_bridge.default_model import DEFAULT_MODEL_NAME as MODEL_NAME
from engine_bridge.default_model import default_model_dir

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
START_TIMEOUT = 300
# The environment as it was before vLLM's client ran in this process (its CLI sets variables).
BASE_ENV = dict(os.environ)
# Every server and the offline engine get the same CPU tuning as `make serve`: tcmalloc and Intel
# OpenMP preloaded when installed (CPU_PRELOAD=off for none).
TUNED_ENV = preload_env(BASE_ENV)


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Server:
    """A server process: start() waits for GET /health to answer 200, stop() ends it."""

    name = ""
    label = ""

    def __init__(self, model_dir: Path, log_dir: Path, prefix_caching: bool = True):
        self.model_dir = model_dir
        self.prefix_caching = prefix_caching
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        suffix = "" if prefix_caching else "-no-prefix-cache"
        self.log_path = log_dir / f"{self.name}{suffix}.log"
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(TUNED_ENV)

    def settings(self) -> dict:
        """What the result file records about how this server ran."""
        raise NotImplementedError

    def start(self) -> "Server":
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            # A session of its own, so stop() can end the server's children too.
            self.process = subprocess.Popen(self.command(), cwd=ROOT, env=self.env(), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() - started < START_TIMEOUT:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.process.returncode}; see {self.log_path}")
            if self._healthy():
                self.startup_s = time.monotonic() - started
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.label} not healthy after {START_TIMEOUT} s; see {self.log_path}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def probe_first_token(self) -> dict:
        """Time one streamed chat request: its first chunk, and its first chunk that carries text.

        vLLM's client takes time to first token at the first chunk that has choices. A server that
        sends its role-only opening chunk before the engine has produced a token would look as if
        its first token came at once; this probe tells the two apart.
        """
        # About 1,000 prompt tokens, new to the prefix cache, so the prefill takes visible time.
        content = f"({time.time_ns()}) Write a short poem about the sea. Context: " + "the sea is wide and deep. " * 150
        body = {"model": MODEL_NAME, "stream": True, "max_tokens": 4, "temperature": 0, "ignore_eos": True,
                "messages": [{"role": "user", "content": content}]}
        request = urllib.request.Request(self.base_url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        first_chunk = first_text = None
        with urllib.request.urlopen(request, timeout=120) as response:
            for line in response:
                if not line.startswith(b"data: {"):
                    continue
                choices = json.loads(line[6:]).get("choices") or []
                now = time.perf_counter() - started
                if choices and first_chunk is None:
                    first_chunk = now
                if choices and choices[0].get("delta", {}).get("content") and first_text is None:
                    first_text = now
        probe = {"first_chunk_ms": None if first_chunk is None else round(first_chunk * 1000, 1),
                 "first_text_ms": None if first_text is None else round(first_text * 1000, 1)}
        probe["opening_chunk_before_first_token"] = (
            first_chunk is not None and first_text is not None
            and first_text - first_chunk > max(0.05, 0.5 * first_text))
        return probe

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL whatever is left after a minute."""
        if self.process is None:
            return
        pgid = self.process.pid  # the server leads its own session, hence its own process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL the server and its children (vLLM's engine core, gunicorn's worker) at once."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class OurServer(Server):
    """This project's server, as `make serve` runs it: gunicorn with the gevent worker."""

    name = "ours"
    label = "this server (gunicorn + gevent + Flask)"
    engine_core = "inprocess"

    def command(self) -> list[str]:
        return [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"]

    def env(self) -> dict[str, str]:
        return {**TUNED_ENV, "HOST": HOST, "PORT": str(self.port), "MODEL": str(self.model_dir),
                "SERVED_MODEL_NAME": MODEL_NAME, "DTYPE": "float32", "KV_CACHE_GB": "1",
                "ENFORCE_EAGER": "true", "ENGINE_SEED": "0",
                "ENABLE_PREFIX_CACHING": "true" if self.prefix_caching else "false",
                "VLLM_CPU_KVCACHE_SPACE": "1", "ENGINE_CORE": self.engine_core,
                # No keep-alive comments: vLLM's client strips each network read before splitting
                # events, so a lone ": keep-alive\n\n" glues itself to every later event and the
                # request looks empty. vLLM's server never sends them, so its runs never hit this.
                "SSE_KEEPALIVE_SECONDS": "86400"}

    def settings(self) -> dict:
        return {"command": "gunicorn -c gunicorn.conf.py wsgi:app", "dtype": "float32", "enforce_eager": True,
                "kv_cache_gib": 1, "seed": 0, "prefix_caching": self.prefix_caching,
                "engine_core": "in-process (ENGINE_CORE=inprocess, LLMEngine in one OS thread)"}


class OurProcessServer(OurServer):
    """This project's server with vLLM's engine core in a process of its own (ENGINE_CORE=process)."""

    name = "ours-process"
    label = "this server, engine core in its own process"
    engine_core = "process"

    def settings(self) -> dict:
        return {**super().settings(), "command": "ENGINE_CORE=process gunicorn -c gunicorn.conf.py wsgi:app",
                "engine_core": "separate process (ENGINE_CORE=process: vLLM's multiprocessing client)"}


class VllmServer(Server):
    """vLLM's own OpenAI server (FastAPI + AsyncLLM) with the same engine settings."""

    name = "vllm"
    label = "vLLM's OpenAI server"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(self.model_dir), "--served-model-name", MODEL_NAME,
                "--host", HOST, "--port", str(self.port),
                "--dtype", "float32", "--enforce-eager", "--seed", "0",
                "--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching"]

    def env(self) -> dict[str, str]:
        env = {**TUNED_ENV, "VLLM_CPU_KVCACHE_SPACE": "1"}
        # Its default engine core: a separate process (AsyncLLM's multiprocess client).
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        return env

    def settings(self) -> dict:
        return {"command": "python -m vllm.entrypoints.openai.api_server " + " ".join(self.command()[3:]),
                "dtype": "float32", "enforce_eager": True, "kv_cache_gib": 1, "seed": 0,
                "prefix_caching": self.prefix_caching,
                "engine_core": "separate process (vLLM's default: VLLM_ENABLE_V1_MULTIPROCESSING=1)"}


class VllmInprocessServer(VllmServer):
    """vLLM's own OpenAI server with its engine core in its API process, as this server runs it."""

    name = "vllm-inproc"
    label = "vLLM's OpenAI server, engine core in-process"

    def env(self) -> dict[str, str]:
        return {**super().env(), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}

    def settings(self) -> dict:
        return {**super().settings(), "command": "VLLM_ENABLE_V1_MULTIPROCESSING=0 " + super().settings()["command"],
                "engine_core": "in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0), as ours"}


SERVERS = {cls.name: cls for cls in (OurServer, OurProcessServer, VllmServer, VllmInprocessServer)}
