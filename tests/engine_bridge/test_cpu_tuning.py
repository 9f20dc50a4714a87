"""The preload launcher (engine_bridge/cpu_tuning.py): which libraries, and how LD_PRELOAD is built."""

import os
import subprocess
import sys

from engine_bridge.cpu_tuning import preload_env, preload_libraries
from tests.conftest import ROOT


def test_finds_tcmalloc_and_the_venvs_intel_openmp(tmp_path):
    tcmalloc = tmp_path / "libtcmalloc_minimal.so.4"
    tcmalloc.write_bytes(b"")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libiomp5.so").write_bytes(b"")
    missing = str(tmp_path / "nowhere.so")
    assert preload_libraries(str(tmp_path), (missing, str(tcmalloc))) == [
        str(tcmalloc), str(tmp_path / "lib" / "libiomp5.so")]
    assert preload_libraries(str(tmp_path / "empty"), (missing,)) == []


def test_ld_preload_keeps_what_is_there_and_names_nothing_twice():
    libs = ["/usr/lib/libtcmalloc_minimal.so.4", "/venv/lib/libiomp5.so"]
    assert preload_env({}, libs)["LD_PRELOAD"] == ":".join(libs)
    kept = preload_env({"LD_PRELOAD": "/opt/libfoo.so"}, libs)["LD_PRELOAD"]
    assert kept == ":".join(libs) + ":/opt/libfoo.so"
    # A tcmalloc of its own already preloaded: only the other library is added.
    mine = preload_env({"LD_PRELOAD": "/opt/libtcmalloc_minimal.so.4"}, libs)["LD_PRELOAD"]
    assert mine == "/venv/lib/libiomp5.so:/opt/libtcmalloc_minimal.so.4"
    assert "LD_PRELOAD" not in preload_env({"CPU_PRELOAD": "off"}, libs)
    assert "LD_PRELOAD" not in preload_env({}, [])


def test_the_launcher_execs_the_command_with_the_preload_in_effect():
    # A fresh process: the dynamic loader reads LD_PRELOAD only when a process starts.
    libraries = preload_libraries()
    assert libraries, "neither tcmalloc nor libiomp5 is installed (make test installs libtcmalloc-minimal4)"
    done = subprocess.run(
        [sys.executable, "-m", "engine_bridge.cpu_tuning", sys.executable, "-c",
         "import os; print(os.environ['LD_PRELOAD']); print(open('/proc/self/maps').read())"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    preload, maps = done.stdout.split("\n", 1)
    assert preload.split(":") == libraries
    for library in libraries:
        assert os.path.realpath(library) in maps
    off = subprocess.run(
        [sys.executable, "-m", "engine_bridge.cpu_tuning", sys.executable, "-c",
         "import os; print(os.environ.get('LD_PRELOAD', ''))"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "CPU_PRELOAD": "off"})
    assert off.stdout.strip() == os.environ.get("LD_PRELOAD", "")
