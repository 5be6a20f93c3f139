"""The run-directory contract (config, metrics.jsonl, events, summary.json, offline wandb) and
the plots drawn from it."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from riskpo.run.plots import plot_run
from riskpo.run.record import (
    REQUIRED_STEP_KEYS,
    LoggerConfig,
    RunLogger,
    format_step,
    json_value,
    message_console,
    read_metrics,
    truncate_metrics,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _step(step: int, evaluate: bool = False) -> dict:
    row = {key: 0.1 * step for key in REQUIRED_STEP_KEYS}
    row["step"] = step
    row["riskpo/tracked_q_alpha"], row["riskpo/tracked_q_beta"] = 1.0 + 0.1 * step, 3.0 - 0.1 * step
    if evaluate:
        row.update({"eval/avg@8": 0.4 + 0.01 * step, "eval/pass@1": 0.4, "eval/pass@2": 0.55,
                    "eval/pass@4": 0.7, "eval/pass@8": 0.8})
    return row


def _logger(tmp_path, backend="none", **kwargs) -> RunLogger:
    console = Console(record=True, width=200)
    return RunLogger(tmp_path, LoggerConfig(backend=backend, progress="plain"),
                     {"seed": 0, "trainer": {"total_steps": 4}}, total_steps=4, run_name="test",
                     console=console, **kwargs)


def test_run_directory_files(tmp_path):
    logger = _logger(tmp_path)
    for step in range(1, 5):
        logger.log_step(_step(step, evaluate=step % 2 == 0))
    logger.event("actor_restart", "verifier actor 0 died; restarted", step=3, actor="verifier-0")
    summary = logger.write_summary({"eval/avg@8": 0.4}, {"eval/avg@8": 0.5}, steps=4, wall_s=12.5)
    logger.close()
    assert "seed: 0" in (tmp_path / "config.yaml").read_text()
    rows = read_metrics(tmp_path)
    assert [row["step"] for row in rows] == [1, 2, 3, 4] and "eval/avg@8" in rows[1]
    assert json.loads(summary.read_text()) == {
        "initial": {"eval/avg@8": 0.4}, "final": {"eval/avg@8": 0.5}, "steps": 4, "wall_s": 12.5}
    event = json.loads((tmp_path / "events.jsonl").read_text())
    assert (event["kind"], event["step"], event["actor"]) == ("actor_restart", 3, "verifier-0")
    screen = logger.console.export_text()
    assert "step 2 | reward 0.200 | avg@8 0.420" in screen and "actor_restart" in screen
    assert not (tmp_path / "wandb").exists()


def test_a_step_without_the_contract_keys_is_refused(tmp_path):
    logger = _logger(tmp_path)
    row = _step(1)
    del row["time/sync"]
    with pytest.raises(ValueError, match="time/sync"):
        logger.log_step(row)
    logger.close()


def test_resume_drops_steps_after_the_checkpoint(tmp_path):
    logger = _logger(tmp_path)
    for step in range(1, 5):
        logger.log_step(_step(step))
    logger.close()
    resumed = _logger(tmp_path, resume_step=2)
    resumed.log_step(_step(3))
    resumed.close()
    assert [row["step"] for row in read_metrics(tmp_path)] == [1, 2, 3]
    assert truncate_metrics(tmp_path, 10) == 0


def test_json_values_are_strict_json():
    import torch

    row = json_value({"a": torch.tensor(1.5), "b": float("nan"), "c": [float("inf"), 2]})
    assert row == {"a": 1.5, "b": None, "c": [None, 2]}
    assert json.loads(json.dumps(row, allow_nan=False)) == row


def test_format_step_lists_phase_times():
    line = format_step(_step(3, evaluate=True))
    assert line.startswith("step 3 | reward 0.300 | avg@8 0.430 | entropy 0.300")
    assert "gen 0.30" in line and "step 0.30s" in line


@pytest.mark.slow
def test_wandb_runs_offline_inside_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = _logger(tmp_path, backend="wandb")
    assert logger.wandb_run_id
    logger.log_step(_step(1))
    logger.close()
    offline_runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and logger.wandb_run_id in offline_runs[0].name


def test_plots_are_written_as_png(tmp_path):
    logger = _logger(tmp_path)
    for step in range(1, 7):
        logger.log_step(_step(step, evaluate=step in (1, 3, 6)))
    logger.close()
    written = plot_run(tmp_path)
    names = sorted(path.name for path in written)
    assert names == ["entropy.png", "eval_avg_at_k.png", "eval_pass_at_k.png",
                     "pass_at_k_vs_k.png", "quantiles.png", "reward.png"]
    assert all(path.read_bytes().startswith(PNG_MAGIC) for path in written)


def test_plots_need_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics"):
        plot_run(tmp_path)


def test_run_plots_of_held_out_metrics_start_at_step_0(tmp_path, monkeypatch):
    """The evaluation before RL (summary.json's "initial") is drawn at step 0."""
    from riskpo.run import plots

    rows = [{"step": s, "train/reward_mean": 0.5, "eval/avg@8": 0.6, "eval/pass@8": 0.9} for s in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "summary.json").write_text(json.dumps(
        {"initial": {"eval/avg@8": 0.4, "eval/pass@8": 0.8}, "final": {}, "steps": 2, "wall_s": 1}))
    drawn = {}
    real = plots._line_plot

    def spy(path, plotted, keys, title, ylabel):
        drawn[path.name] = [row["step"] for row in plotted if any(key in row for key in keys)]
        return real(path, plotted, keys, title, ylabel)

    monkeypatch.setattr(plots, "_line_plot", spy)
    plots.plot_run(tmp_path)
    assert drawn["eval_avg_at_k.png"] == drawn["eval_pass_at_k.png"] == [0, 1, 2]
    assert drawn["reward.png"] == [1, 2]


def test_the_message_console_never_breaks_a_long_line_into_a_log(capfd):
    """A path or command printed to a file or a pipe (stderr redirected into a log, a parent
    process reading it) stays on one line, so it can be copied; rich alone wraps at 80 columns."""
    command = "riskpo-compare --runs-dir " + "/tmp/" + "deep/" * 30 + "runs --output report.md"
    message_console().print(f"[bold yellow]interrupted[/]: run `{command}` again")
    assert f"interrupted: run `{command}` again\n" == capfd.readouterr().err
