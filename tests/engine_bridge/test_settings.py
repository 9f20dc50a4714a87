"""Engine settings from the environment, and the defaults that depend on the device."""

import dataclasses

import pytest
from vllm import EngineArgs

from engine_bridge.engine import engine_arguments
from engine_bridge.settings import EngineSettings, platform_defaults


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("DTYPE", "ENFORCE_EAGER", "GPU_MEMORY_UTILIZATION", "MAX_NUM_SEQS", "MAX_NUM_BATCHED_TOKENS",
                 "TENSOR_PARALLEL_SIZE", "PIPELINE_PARALLEL_SIZE", "DISTRIBUTED_EXECUTOR_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_cpu_runs_eager_in_float32():
    defaults = platform_defaults("cpu")
    assert defaults.enforce_eager is True
    assert defaults.dtype == "float32"


@pytest.mark.parametrize("platform", ["cuda", "rocm"])
def test_a_gpu_gets_cuda_graphs_and_the_models_own_dtype(platform):
    defaults = platform_defaults(platform)
    assert defaults.enforce_eager is False
    assert defaults.dtype == "auto"


def test_unset_variables_leave_the_choice_to_the_platform(clean_env):
    settings = EngineSettings.from_env()
    assert settings.enforce_eager is None
    assert settings.dtype == "auto"
    cpu, cuda = engine_arguments(settings, "cpu"), engine_arguments(settings, "cuda")
    assert (cpu["enforce_eager"], cpu["dtype"]) == (True, "float32")
    assert (cuda["enforce_eager"], cuda["dtype"]) == (False, "auto")


@pytest.mark.parametrize("platform", ["cpu", "cuda"])
def test_explicit_values_win_over_the_platform_defaults(clean_env, platform):
    clean_env.setenv("ENFORCE_EAGER", "false" if platform == "cpu" else "true")
    clean_env.setenv("DTYPE", "bfloat16")
    arguments = engine_arguments(EngineSettings.from_env(), platform)
    assert arguments["enforce_eager"] is (platform == "cuda")
    assert arguments["dtype"] == "bfloat16"


def test_capacity_and_parallelism_variables_reach_vllms_engine_args(clean_env):
    clean_env.setenv("GPU_MEMORY_UTILIZATION", "0.85")
    clean_env.setenv("MAX_NUM_SEQS", "128")
    clean_env.setenv("MAX_NUM_BATCHED_TOKENS", "8192")
    clean_env.setenv("TENSOR_PARALLEL_SIZE", "4")
    clean_env.setenv("PIPELINE_PARALLEL_SIZE", "2")
    clean_env.setenv("DISTRIBUTED_EXECUTOR_BACKEND", "ray")
    args = EngineArgs(**engine_arguments(EngineSettings.from_env(), "cuda"))
    assert args.gpu_memory_utilization == 0.85
    assert args.max_num_seqs == 128
    assert args.max_num_batched_tokens == 8192
    assert args.tensor_parallel_size == 4
    assert args.pipeline_parallel_size == 2
    assert args.distributed_executor_backend == "ray"


def test_unset_capacity_and_parallelism_are_vllms_own_defaults(clean_env):
    arguments = engine_arguments(EngineSettings.from_env(), "cuda")
    assert arguments["max_num_seqs"] is None and arguments["max_num_batched_tokens"] is None
    assert arguments["distributed_executor_backend"] is None
    assert (arguments["tensor_parallel_size"], arguments["pipeline_parallel_size"]) == (1, 1)
    assert arguments["gpu_memory_utilization"] == 0.9


def test_every_engine_argument_is_a_field_of_vllms_engine_args():
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    assert set(engine_arguments(EngineSettings(), "cuda")) <= fields
