"""LORA_MODULES, MAX_LORA_RANK and MAX_LORAS: parsed from the environment, turned into vLLM's engine arguments."""

import json

import pytest

from engine_bridge import EngineSettings
from engine_bridge.engine import lora_engine_args


def adapter(folder, rank: int) -> str:
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "target_modules": ["q_proj"]}))
    return str(folder)


def test_lora_modules_are_parsed_in_order(monkeypatch):
    monkeypatch.setenv("LORA_MODULES", "sql=/adapters/sql, chat = /adapters/chat ,")
    monkeypatch.setenv("MAX_LORA_RANK", "32")
    settings = EngineSettings.from_env()
    assert settings.lora_modules == (("sql", "/adapters/sql"), ("chat", "/adapters/chat"))
    assert (settings.max_lora_rank, settings.max_loras) == (32, None)


@pytest.mark.parametrize("value", ["sql", "=/path", "sql=", "a=/x,a=/y"])
def test_a_malformed_lora_modules_stops_start_up(monkeypatch, value):
    monkeypatch.setenv("LORA_MODULES", value)
    with pytest.raises(ValueError, match="LORA_MODULES"):
        EngineSettings.from_env()


def test_an_adapter_may_not_take_the_base_model_name():
    with pytest.raises(ValueError, match="base model"):
        EngineSettings(served_model_name="base", lora_modules=(("base", "/x"),))


def test_no_adapters_leave_lora_off():
    assert lora_engine_args(EngineSettings()) == {}


def test_the_rank_defaults_to_the_largest_adapter_rounded_up_to_one_vllm_supports(tmp_path):
    modules = (("a", adapter(tmp_path / "a", 8)), ("b", adapter(tmp_path / "b", 12)))
    assert lora_engine_args(EngineSettings(lora_modules=modules)) == {
        "enable_lora": True, "max_lora_rank": 16, "max_loras": 2, "max_cpu_loras": 2}
    explicit = EngineSettings(lora_modules=modules, max_lora_rank=64, max_loras=1)
    assert lora_engine_args(explicit) == {"enable_lora": True, "max_lora_rank": 64, "max_loras": 1,
                                          "max_cpu_loras": 2}
