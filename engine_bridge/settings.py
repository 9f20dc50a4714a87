"""Engine settings, read from the environment in one place."""

import os
from dataclasses import dataclass, field

from engine_bridge.default_model import DEFAULT_MODEL_NAME, default_model_dir


def _env_bool(name: str, default: bool | None) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _env_lora_modules(name: str) -> tuple[tuple[str, str], ...]:
    """LORA_MODULES="name=path,name2=path2" as ((name, path), ...); names must be unique."""
    modules = []
    for entry in (os.environ.get(name) or "").split(","):
        if not entry.strip():
            continue
        adapter, sep, path = (part.strip() for part in entry.partition("="))
        if not sep or not adapter or not path:
            raise ValueError(f"{name}: expected name=path, got {entry.strip()!r}")
        if adapter in dict(modules):
            raise ValueError(f"{name}: the adapter name {adapter!r} is given twice")
        modules.append((adapter, path))
    return tuple(modules)


def _env_float(name: str, default: float | None) -> float | None:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


ENGINE_CORE_CHOICES = ("auto", "inprocess", "process")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags of this machine's first CPU (empty where /proc/cpuinfo is not)."""
    try:
        with open(cpuinfo) as file:
            for line in file:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_auto_dtype(flags: frozenset[str]) -> str:
    """What DTYPE=auto means on a CPU with these flags: bfloat16 only where vLLM's bf16 path is native.

    With AMX (amx_bf16), vLLM's CPU build runs bfloat16 on its AMX kernels (attention and
    GEMMs). Elsewhere float32: with AVX-512 BF16 but no AMX, bf16 answered "What is the capital
    of France?" with "L'Étoile, la Marseillaise, la femme, ..." (docs/engine-notes.md); on AVX2
    there is no bf16 arithmetic at all and every bf16 GEMM is converted, far slower than float32.
    """
    return "bfloat16" if "amx_bf16" in flags else "float32"


def _engine_core(value: str) -> str:
    value = value.strip().lower().replace("-", "").replace("_", "")
    if value not in ENGINE_CORE_CHOICES:
        raise ValueError(f"ENGINE_CORE must be one of {', '.join(ENGINE_CORE_CHOICES)}, not {value!r}")
    return value


@dataclass(frozen=True)
class PlatformDefaults:
    """What an unset setting means on one kind of device."""

    # What DTYPE=auto becomes: "auto" hands the choice to vLLM (the model's own dtype).
    dtype: str
    # ENFORCE_EAGER when unset: True skips torch.compile and CUDA graphs.
    enforce_eager: bool


def platform_defaults(platform: str, flags: frozenset[str] | None = None) -> PlatformDefaults:
    """The defaults for vLLM's platform (its device_type: "cpu", "cuda", ...); the one place they are decided.

    CPU: cpu_auto_dtype of the CPU's flags (this machine's when flags is None): bfloat16 with AMX,
    float32 elsewhere, because bf16 without AMX gave wrong text or ran slower; eager, because
    torch.compile's warm-up added about 95 s to start-up and CPU has no CUDA graphs to gain.
    A GPU: the model's own dtype, and CUDA graphs on (eager off), which decode needs for speed.
    """
    if platform == "cpu":
        return PlatformDefaults(dtype=cpu_auto_dtype(cpu_flags() if flags is None else flags), enforce_eager=True)
    return PlatformDefaults(dtype="auto", enforce_eager=False)


@dataclass(frozen=True)
class EngineSettings:
    """What the engine loads and how; every field has an environment variable (see README)."""

    model: str = field(default_factory=lambda: str(default_model_dir()))
    served_model_name: str = DEFAULT_MODEL_NAME
    # "auto" means the platform's default (platform_defaults): on CPU cpu_auto_dtype (bfloat16 with
    # AMX, float32 elsewhere), on GPU the model's own.
    dtype: str = "auto"
    max_model_len: int | None = None
    kv_cache_gb: int = 1
    gpu_memory_utilization: float = 0.9
    # vLLM's own parallelism: several worker processes (one per device) started by its executor,
    # "mp" (multiprocessing, one host) or "ray" (several hosts); None lets vLLM choose.
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    # None means the platform's default (platform_defaults): eager on CPU, CUDA graphs on GPU.
    enforce_eager: bool | None = None
    enable_prefix_caching: bool = True
    seed: int = 0
    # Where vLLM's engine core runs: "inprocess" (in the engine thread), "process" (a process of
    # its own, vLLM's multiprocessing client), or "auto": process with CUDA, in-process on CPU.
    engine_core: str = "auto"
    # "module:function" building the engine from these settings instead of build_engine
    # (a wrapped or instrumented LLMEngine); unset for vLLM's own.
    engine_factory: str | None = None
    # LoRA adapters served as models of their own: (name, folder) pairs; empty turns LoRA off.
    lora_modules: tuple[tuple[str, str], ...] = ()
    # None: the largest rank among the adapters / one slot per adapter in a batch.
    max_lora_rank: int | None = None
    max_loras: int | None = None

    def __post_init__(self):
        if self.served_model_name in dict(self.lora_modules):
            raise ValueError(f"LORA_MODULES: the adapter name {self.served_model_name!r} is the base model's")
    # vLLM's tool-call parser for tool_choice "auto" (its --tool-call-parser names). "hermes" reads
    # <tool_call>{"name": ..., "arguments": ...}</tool_call>, the format the server writes tools in
    # for templates without a tool format of their own, SmolLM2's included.
    tool_call_parser: str = "hermes"

    @classmethod
    def from_env(cls) -> "EngineSettings":
        """Build settings from MODEL, SERVED_MODEL_NAME, DTYPE, MAX_MODEL_LEN and friends."""
        model = os.environ.get("MODEL") or str(default_model_dir())
        default_name = DEFAULT_MODEL_NAME if model == str(default_model_dir()) else model
        return cls(
            model=model,
            served_model_name=os.environ.get("SERVED_MODEL_NAME") or default_name,
            dtype=os.environ.get("DTYPE") or "auto",
            max_model_len=_env_int("MAX_MODEL_LEN", None),
            kv_cache_gb=_env_int("KV_CACHE_GB", 1),
            gpu_memory_utilization=_env_float("GPU_MEMORY_UTILIZATION", 0.9),
            tensor_parallel_size=_env_int("TENSOR_PARALLEL_SIZE", 1),
            pipeline_parallel_size=_env_int("PIPELINE_PARALLEL_SIZE", 1),
            distributed_executor_backend=os.environ.get("DISTRIBUTED_EXECUTOR_BACKEND") or None,
            max_num_seqs=_env_int("MAX_NUM_SEQS", None),
            max_num_batched_tokens=_env_int("MAX_NUM_BATCHED_TOKENS", None),
            enforce_eager=_env_bool("ENFORCE_EAGER", None),
            enable_prefix_caching=_env_bool("ENABLE_PREFIX_CACHING", True),
            seed=_env_int("ENGINE_SEED", 0),
            engine_factory=os.environ.get("ENGINE_FACTORY") or None,
            lora_modules=_env_lora_modules("LORA_MODULES"),
            max_lora_rank=_env_int("MAX_LORA_RANK", None),
            max_loras=_env_int("MAX_LORAS", None),
            tool_call_parser=os.environ.get("TOOL_CALL_PARSER") or "hermes",
            engine_core=_engine_core(os.environ.get("ENGINE_CORE") or "auto"),
        )


@dataclass(frozen=True)
class LifecycleSettings:
    """How the gunicorn worker loads, retries, drains and restarts; each field has a variable (see README)."""

    # On SIGTERM, /health says draining for at least this long before the port closes, so load
    # balancers see it, unless it is shorter than the graceful budget (GRACEFUL_TIMEOUT).
    drain_seconds: float = 5.0
    # Tries to load the engine (each in a fresh worker process) before the server gives up.
    load_attempts: int = 3
    # Wait before the second try; each further try waits twice as long as the one before.
    load_retry_seconds: float = 5.0

    @classmethod
    def from_env(cls) -> "LifecycleSettings":
        """Build settings from DRAIN_SECONDS, ENGINE_LOAD_ATTEMPTS and ENGINE_LOAD_RETRY_SECONDS."""
        return cls(
            drain_seconds=_env_float("DRAIN_SECONDS", 5.0),
            load_attempts=max(1, _env_int("ENGINE_LOAD_ATTEMPTS", 3)),
            load_retry_seconds=_env_float("ENGINE_LOAD_RETRY_SECONDS", 5.0),
        )


@dataclass(frozen=True)
class CpuTuningSettings:
    """How the server is started on a CPU host (engine_bridge/cpu_tuning.py); a variable per field (see README)."""

    # Preload tcmalloc and Intel OpenMP (those installed) into the server, as vLLM's CPU guide asks.
    preload: bool = True

    @classmethod
    def from_env(cls, env: "dict[str, str] | None" = None) -> "CpuTuningSettings":
        """Build settings from CPU_PRELOAD (on by default; "off" or "0" turns it off)."""
        value = (os.environ if env is None else env).get("CPU_PRELOAD", "").strip().lower()
        return cls(preload=value not in ("0", "off", "false", "no"))
