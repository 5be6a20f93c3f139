"""The warm start trains, saves a loadable model, and is cached by its settings (tiny settings:
a few steps of a very small model)."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from rich.console import Console

from launch.config import compose_config, validate
from riskpo.data.loaders import DataConfig, DatasetConfig, load_train_and_eval
from riskpo.data.tasks.arithmetic import ArithmeticOptions
from riskpo.data.tasks.files import FilesOptions
from riskpo.models import warmstart
from riskpo.models.config import ModelConfig, TinyModelConfig, WarmstartConfig


def _settings(tmp_path, **warm):
    model = ModelConfig(
        tiny=TinyModelConfig(hidden_size=32, num_layers=1, num_heads=1, head_dim=32,
                             intermediate_size=64, max_position_embeddings=32),
        warmstart=WarmstartConfig(target_accuracy=1.0, max_steps=3, batch_size=16, lr=1e-2,
                                  eval_every=3, eval_problems=8, cache_dir=str(tmp_path), **warm),
    )
    easy = ArithmeticOptions(min_digits=1, max_digits=2)
    data = DataConfig(train=DatasetConfig(size=100, options=easy),
                      eval=DatasetConfig(size=20, seed=1, options=easy))
    return model, data


def test_trains_saves_and_reuses_the_cache(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, data = _settings(tmp_path)
    console = Console(record=True, width=200)
    path = warmstart.ensure_warm_start(model, data, console=console)
    assert path == warmstart.warm_start_dir(model, data) and path.parent.parent == tmp_path
    report = json.loads((path / warmstart.REPORT_FILE).read_text())
    assert report["steps"] == 3 and report["stop_reason"] == "steps" and not report["reached_target"]
    assert 0.0 <= report["accuracy"] <= 1.0
    assert "did NOT reach" in console.export_text()
    loaded = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert loaded.config.hidden_size == 32 and tokenizer.decode(tokenizer.encode("12+3=")) == "12+3="

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cached warm start was trained again")

    monkeypatch.setattr(warmstart, "train_warm_start", must_not_train)
    again = Console(record=True, width=200)
    assert warmstart.ensure_warm_start(model, data, console=again) == path
    assert "skipping training" in again.export_text()


def test_processes_starting_together_train_one_warm_start_and_share_it(tmp_path, monkeypatch):
    """Two runs needing the same uncached warm start (riskpo-compare's jobs, a CI's parallel
    tests): one trains it, the other waits and loads it instead of training it again."""
    import threading

    model, data = _settings(tmp_path)
    trained, started = [], threading.Event()
    real = warmstart.train_warm_start

    def slow_train(*args, **kwargs):
        trained.append(1)
        started.set()
        time.sleep(1.0)  # long enough for the second caller to find the lock taken
        return real(*args, **kwargs)

    monkeypatch.setattr(warmstart, "train_warm_start", slow_train)
    consoles = [Console(record=True, width=200) for _ in range(2)]
    paths: list = []
    first = threading.Thread(target=lambda: paths.append(
        warmstart.ensure_warm_start(model, data, console=consoles[0])))
    first.start()
    assert started.wait(30)
    paths.append(warmstart.ensure_warm_start(model, data, console=consoles[1]))
    first.join()
    assert len(trained) == 1 and paths[0] == paths[1]
    said = consoles[1].export_text()
    assert "waiting for it" in said and "skipping training" in said


def test_cache_key_follows_every_setting_but_the_cache_dir(tmp_path):
    model, data = _settings(tmp_path)
    key = warmstart.settings_key(model, data)
    moved = replace(model, warmstart=replace(model.warmstart, cache_dir="/elsewhere"))
    assert warmstart.settings_key(moved, data) == key
    faster = replace(model, warmstart=replace(model.warmstart, lr=5e-3))
    wider = replace(model, tiny=replace(model.tiny, hidden_size=64))
    harder = replace(data, train=replace(data.train, options=ArithmeticOptions(max_digits=4)))
    keys = {warmstart.settings_key(m, d) for m, d in ((faster, data), (wider, data), (model, harder))}
    assert key not in keys and len(keys) == 3


def test_a_run_on_the_validation_split_starts_from_the_same_warm_start(tmp_path):
    """The warm start never trains on either held-out split, whichever the run evaluates on: a
    learning-rate sweep (data.eval_on=validation) and the runs it chooses for share one model."""
    model, data = _settings(tmp_path)
    data = replace(data, validation=replace(data.eval, seed=data.eval.seed + 1))
    key = warmstart.settings_key(model, data)
    assert warmstart.settings_key(model, replace(data, eval_on="validation")) == key
    assert warmstart.settings_key(model, replace(data, validation=None)) != key
    excluded = warmstart._evaluation_prompts(data)
    assert excluded == {row.prompt_key for split in ("eval", "validation")
                        for row in load_train_and_eval(replace(data, eval_on=split))[1]}


# settings_key of every shipped data config at commit a45c989 (before the task registry): the
# cached warm starts, and so the trained models, stay what they were
SHIPPED_KEYS = {
    "data=arithmetic": "a5188471cf0ad59d",
    "data=arithmetic_with_validation": "48ba63a8fe05d9de",
    "data=arithmetic_harder_eval": "f221ecf8d7ccd1a8",
    "data=countdown": "b7c429971e2b23d7",
    "data=code": "00ae82bda764d24d",
    "experiment=embedded_vlm": "ad0b09b3a7b6bc38",  # data=visual with the tiny VLM
}


@pytest.mark.parametrize(("override", "key"), SHIPPED_KEYS.items())
def test_shipped_configs_keep_their_cache_keys(override, key):
    run = validate(compose_config([override]))
    assert warmstart.settings_key(run.model, run.data) == key


def test_cache_root_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RISKPO_CACHE", str(tmp_path / "env"))
    assert warmstart.cache_root() == tmp_path / "env"
    assert warmstart.cache_root(str(tmp_path / "cfg")) == tmp_path / "cfg"
    monkeypatch.delenv("RISKPO_CACHE")
    assert str(warmstart.cache_root()).endswith(".cache/riskpo-rl")


def test_stops_at_the_target_or_the_time_cap(tmp_path, monkeypatch):
    model, data = _settings(tmp_path)
    accuracies = iter([0.0, 0.2, 0.6, 0.9])
    monkeypatch.setattr(warmstart, "sampled_accuracy", lambda *args: next(accuracies))
    target = replace(model, warmstart=replace(model.warmstart, target_accuracy=0.5, eval_every=2,
                                              max_steps=100))
    report = warmstart.train_warm_start(target, data, tmp_path / "a", Console(quiet=True))
    assert (report.stop_reason, report.steps, report.accuracy) == ("target", 6, 0.6)
    assert report.reached_target
    timed = replace(model, warmstart=replace(model.warmstart, target_accuracy=0.95, eval_every=50,
                                             max_steps=100, max_cpu_seconds=1e-9))
    report = warmstart.train_warm_start(timed, data, tmp_path / "b", Console(quiet=True))
    assert (report.stop_reason, report.steps, report.accuracy) == ("time", 1, 0.9)
    assert not report.reached_target


def test_refuses_what_it_cannot_warm_start(tmp_path):
    model, data = _settings(tmp_path)
    with pytest.raises(ValueError, match="only for `tiny`"):
        warmstart.ensure_warm_start(replace(model, path="/some/model"), data)
    files = replace(data, train=DatasetConfig(source="jsonl", options=FilesOptions(["x.jsonl"])))
    with pytest.raises(ValueError, match="needs a task it can learn"):
        warmstart.ensure_warm_start(model, files)


def test_warm_starts_on_the_code_task_too(tmp_path):
    model, data = _settings(tmp_path)
    code = DatasetConfig(source="synthetic_code", size=50)
    data = replace(data, train=code, eval=replace(code, size=10, seed=1))
    model = replace(model, tiny=replace(model.tiny, max_position_embeddings=96),
                    warmstart=replace(model.warmstart, max_steps=2, eval_every=2))
    report = warmstart.train_warm_start(model, data, tmp_path / "code", Console(quiet=True))
    assert report.steps == 2 and report.stop_reason == "steps"
