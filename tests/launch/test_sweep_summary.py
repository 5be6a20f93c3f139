"""sweep_summary on fake run directories shaped like the driver's contract outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from launch import sweep_summary


def _fake_run(run_dir: Path, algorithm: str, seed: int, final: dict | None, steps: int = 3) -> Path:
    run_dir.mkdir(parents=True)
    config = {"seed": seed, "run_dir": str(run_dir), "trainer": {"total_steps": steps},
              "algorithm": {"name": algorithm, "beta": 0.9, "clip": [0.2, 0.28]}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    if final is not None:
        summary = {"initial": {"eval/avg@8": 0.4}, "final": final, "steps": steps, "wall_s": 12.5}
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def _table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_table_has_one_row_per_run_with_differing_overrides_and_final_metrics(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun" / "2026-11-26_16-00-00"
    _fake_run(sweep / "0", "riskpo", 0, {"eval/avg@8": 0.61234, "eval/pass@8": 0.9})
    _fake_run(sweep / "1", "riskpo", 1, {"eval/avg@8": 0.58, "eval/pass@8": 0.85})
    _fake_run(sweep / "10", "grpo", 0, {"eval/avg@8": 0.5, "eval/pass@8": 0.8})
    _fake_run(sweep / "2", "grpo", 1, None)  # a run that died before writing summary.json

    output = sweep_summary.write_sweep_summary([sweep])

    assert output == sweep / "sweep_summary.md"
    header, _, *rows = _table_rows(output.read_text())
    assert header == ["run", "algorithm.name", "seed", "final eval/avg@8", "final eval/pass@8",
                      "steps", "wall_s"]
    assert [row[0] for row in rows] == ["0", "1", "2", "10"]  # natural order of job numbers
    assert rows[0] == ["0", "riskpo", "0", "0.6123", "0.9", "3", "12.5"]
    assert rows[2][:3] == ["2", "grpo", "1"] and rows[2][-2] == "no summary.json"
    assert rows[3][:4] == ["10", "grpo", "0", "0.5"]


def test_explicit_run_dirs_and_output_file(tmp_path: Path) -> None:
    a = _fake_run(tmp_path / "a", "riskpo", 0, {"eval/avg@8": 0.6}, steps=3)
    b = _fake_run(tmp_path / "b", "riskpo", 0, {"eval/avg@8": 0.7}, steps=5)
    output = sweep_summary.write_sweep_summary([a, b], tmp_path / "table.md")
    header, _, *rows = _table_rows(output.read_text())
    assert header[:2] == ["run", "trainer.total_steps"]  # run_dir differs too, but is ignored
    assert [row[:3] for row in rows] == [["a", "3", "0.6"], ["b", "5", "0.7"]]


def test_hydra_written_config_is_found(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": 3}))
    assert sweep_summary.find_run_dirs([run]) == [run]


def test_errors_name_the_directory(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sweep_summary.main([str(empty)]) == 1
    assert str(empty) in capsys.readouterr().err
    bad = _fake_run(tmp_path / "bad", "riskpo", 0, None)
    (bad / "summary.json").write_text(json.dumps({"steps": 3}))
    with pytest.raises(ValueError, match="'final'"):
        sweep_summary.load_run(bad)


def test_hydra_callback_writes_into_the_sweep_dir(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    _fake_run(tmp_path / "0", "riskpo", 0, {"eval/avg@8": 0.6})
    _fake_run(tmp_path / "1", "grpo", 0, {"eval/avg@8": 0.5})
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweep_summary.SweepSummaryCallback().on_multirun_end(config)
    assert "| 1 | grpo | 0.5 |" in (tmp_path / "sweep_summary.md").read_text()
