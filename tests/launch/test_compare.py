"""riskpo-compare: spec validation and fairness, the report's numbers from known run directories,
and the CI comparison itself (2 algorithms x 2 seeds, 3 steps) through the command line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.compare_report import (
    config_differences,
    diagnostics_table,
    findings,
    matched_reward,
    paper_claims,
    study_table,
    sweep_table,
    write_report,
)
from launch.compare_results import interval, load_result
from launch.compare_spec import choose, load_spec, plan, plan_sweeps, unique_runs
from riskpo.options import ConfigError

ROOT = Path(__file__).resolve().parent.parent.parent


def write_spec(tmp_path: Path, studies: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text("name: test\ncommon: [logger.backend=none]\nstudies:\n" + studies)
    return path


TWO_ARMS = """\
  arith:
    overrides: [trainer.total_steps=4]
    seeds: [0, 1]
    target: 0.5
    baseline: grpo
    arms:
      riskpo_paper: [algorithm=riskpo_paper]
      grpo: [algorithm=grpo]
"""


def test_a_study_whose_arms_differ_outside_the_algorithm_is_refused(tmp_path):
    spec = load_spec(write_spec(tmp_path, TWO_ARMS.replace(
        "grpo: [algorithm=grpo]", "grpo: [algorithm=grpo, trainer.samples_per_prompt=4]")))
    with pytest.raises(ConfigError, match=r"studies.arith.*trainer.samples_per_prompt"):
        plan(spec, tmp_path / "runs")


def test_spec_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="studies.arith.baseline"):
        load_spec(write_spec(tmp_path, TWO_ARMS.replace("baseline: grpo", "baseline: ppo")))
    with pytest.raises(ConfigError, match="studies.arith.seeds"):
        load_spec(write_spec(tmp_path, TWO_ARMS.replace("seeds: [0, 1]", "seeds: []")))
    with pytest.raises(ConfigError, match="arith/riskpo_paper/seed0: algorithm.options.alpha.*beta=2.0"):
        plan(load_spec(write_spec(tmp_path, TWO_ARMS.replace(
            "[algorithm=riskpo_paper]", "[algorithm=riskpo_paper, algorithm.options.beta=2.0]"))),
             tmp_path / "runs")


def test_a_spec_with_a_moved_key_is_refused_naming_the_new_key(tmp_path):
    spec = load_spec(write_spec(tmp_path, TWO_ARMS.replace(
        "[algorithm=riskpo_paper]", "[algorithm=riskpo_paper, algorithm.beta=0.9]")))
    with pytest.raises(ConfigError) as error:
        plan(spec, tmp_path / "runs")
    assert str(error.value).splitlines() == [
        "arith/riskpo_paper/seed0: algorithm.beta: moved to algorithm.options.beta -> write "
        "algorithm.options.beta=... instead"]
    swept = TWO_ARMS + "    sweep: {key: algorithm.w_mix, values: [0.5, 1.5]}\n"
    with pytest.raises(ConfigError, match="algorithm.w_mix: moved to algorithm.options.w_mix"):
        plan_sweeps(load_spec(write_spec(tmp_path, swept)), tmp_path / "runs")


def test_the_config_differences_show_each_arms_own_options(tmp_path):
    """A GRPO arm has no RiskPO options: the report's table leaves its cells empty (—)
    instead of listing RiskPO's defaults, which a GRPO run never reads."""
    studies = plan(load_spec(write_spec(tmp_path, TWO_ARMS)), tmp_path / "runs")
    table = config_differences(studies["arith"]).splitlines()
    keys = [cell.strip(" `") for cell in table[0].strip("|").split("|")][1:]
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.strip("|").split("|")][1:]
            for line in table[2:]}
    grpo, riskpo = dict(zip(keys, rows["grpo"], strict=True)), dict(zip(keys, rows["riskpo_paper"], strict=True))
    assert (grpo["algorithm.options.alpha"], riskpo["algorithm.options.alpha"]) == ("—", "0.2")
    assert (grpo["algorithm.options.std_normalize"], riskpo["algorithm.options.std_normalize"]) == ("True", "False")
    riskpo_only = [key for key in keys if grpo[key] == "—"]
    assert len(riskpo_only) == 18 and "algorithm.options.tracker_schedule" in riskpo_only


def test_identical_runs_in_two_studies_run_once(tmp_path):
    second = TWO_ARMS.replace("arith:", "again:").replace("grpo: [algorithm=grpo]",
                                                           "grpo_too: [algorithm=grpo]")
    second = second.replace("baseline: grpo", "baseline: grpo_too")
    studies = plan(load_spec(write_spec(tmp_path, TWO_ARMS + second)), tmp_path / "runs")
    assert len(studies["arith"]) == len(studies["again"]) == 4
    assert len(unique_runs(studies)) == 4  # the second study reuses the first one's runs
    assert {run.arm for run in studies["again"]} == {"riskpo_paper", "grpo_too"}


def fake_run(run_dir: Path, finals: dict[str, float], curve: list[tuple[int, float]],
             entropy: float) -> None:
    """A finished run directory with the files the report reads."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"step": s, "actor/entropy": entropy, "adv/all_wrong_nonzero_fraction": 0.5}
            for s in range(1, 5)]
    for step, avg in curve[1:]:
        rows[step - 1].update({"eval/pass@1": avg, "eval/pass@2": avg + 0.1})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"initial": {"eval/pass@1": curve[0][1], "eval/pass@2": curve[0][1] + 0.1},
               "final": finals, "steps": 4, "wall_s": 10.0}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_report_numbers_from_known_runs(tmp_path):
    spec = load_spec(write_spec(tmp_path, TWO_ARMS))
    studies = plan(spec, tmp_path / "runs")
    values = {("riskpo_paper", 0): 0.4, ("riskpo_paper", 1): 0.6, ("grpo", 0): 0.5, ("grpo", 1): 0.5}
    for run in studies["arith"]:
        avg = values[(run.arm, run.seed)]
        fake_run(run.run_dir, {"eval/pass@1": avg, "eval/pass@2": avg + 0.2,
                               "eval/greedy_accuracy": avg},
                 [(0, 0.3), (2, avg - 0.1), (4, avg)], entropy=0.1 if run.arm == "grpo" else 0.3)
    study = spec.studies[0]
    results = [load_result(run) for run in studies["arith"]]
    grouped = {"riskpo_paper": [r for r in results if r.arm == "riskpo_paper"],
               "grpo": [r for r in results if r.arm == "grpo"]}
    table = study_table(study, grouped)
    # 95% Student t half-width of (0.4, 0.6): t(0.975, 1) * 0.1414 / sqrt(2) = 1.271
    assert "| riskpo_paper | 2 | 0.500 ± 1.271 | 0.700 ± 1.271 |" in table
    assert "| grpo | 2 | 0.500 ± 0.000 | 0.700 ± 0.000 |" in table
    assert "| *before RL* | 4 | 0.300 ± 0.000 |" in table
    # avg@1 >= 0.5: riskpo seed 1 at step 2 (0.5), grpo both seeds at step 4
    assert "| 2 (1/2 runs) |" in table and "| 4 (2/2 runs) |" in table
    lines = findings(study, grouped)
    assert any("Highest entropy at the end: **riskpo_paper**" in line for line in lines)
    assert any("riskpo_paper − grpo: pass@k gap +0.000 at k=1, +0.000 at k=2 (the gap does not move with k)" in line
               for line in lines)
    claims = paper_claims(study, grouped)
    assert "| higher entropy at the end | riskpo_paper | 0.300 ± 0.000 | 0.100 ± 0.000 | holds |" in claims
    assert "| higher pass@2 | riskpo_paper | 0.700 ± 1.271 | 0.700 ± 0.000 | does not hold |" in claims
    # widening, per run pass@2 - avg@1: 0.2 for every run of both arms
    assert ("| a wider pass@k spread (pass@2 − avg@1) | riskpo_paper | 0.200 ± 0.000 | 0.200 ± 0.000 "
            "| does not hold |") in claims
    report = write_report(spec, studies, tmp_path / "out" / "results.md", "riskpo-compare")
    text = report.read_text()
    assert "4 of 4 runs finished" in text and "`algorithm.name`" in text
    assert "What was tried" not in text  # the spec has no notes
    assert "**Run time**: 0 sweep runs (0 min) and 4 seed runs (1 min)" in text  # 4 x 10 s
    assert "The paper's claims on this task" in text
    assert (tmp_path / "out" / "results" / "arith_over_steps.png").is_file()


def test_a_studys_notes_go_into_its_section_of_the_report(tmp_path):
    spec = load_spec(write_spec(tmp_path, TWO_ARMS + "    notes: |\n      Tried a higher rate.\n"))
    assert spec.studies[0].notes == "Tried a higher rate."
    text = write_report(spec, plan(spec, tmp_path / "runs"), tmp_path / "r.md", "riskpo-compare").read_text()
    assert "**What was tried, and how we read it**" in text and "Tried a higher rate." in text
    assert "0 of 4 runs finished" in text


def test_interval_is_the_student_t_95_percent_interval():
    mean, half = interval([0.1, 0.2, 0.3, 0.4, 0.5])
    assert mean == pytest.approx(0.3) and half == pytest.approx(2.7764451 * 0.158113883 / 5 ** 0.5)
    assert interval([0.7])[0] == 0.7 and interval([0.7])[1] != interval([0.7])[1]  # NaN: one seed


SWEPT = TWO_ARMS.replace("    arms:", """    sweep: {key: learner.lr, values: [1.0e-5, 4.0e-5], seed: 7,
            overrides: [data.eval_on=validation], metric: eval/pass@1}
    arms:""").replace("[trainer.total_steps=4]", "[data=arithmetic_with_validation, trainer.total_steps=4]")


def test_a_sweep_picks_each_arms_value_on_its_own_split_then_runs_the_seeds(tmp_path):
    spec = load_spec(write_spec(tmp_path, SWEPT))
    sweeps = plan_sweeps(spec, tmp_path / "runs")["arith"]
    assert len(sweeps) == 4 and {run.seed for run in sweeps} == {7}
    assert sweeps[0].label == "arith/riskpo_paper/learner.lr_1e-05"  # progress names the value
    assert all(run.config.data.eval_on == "validation" for run in sweeps)
    assert plan(spec, tmp_path / "runs", {})["arith"] == []  # nothing chosen yet: no runs
    scores = {("riskpo_paper", "learner.lr_1e-05"): 0.2, ("riskpo_paper", "learner.lr_4e-05"): 0.4,
              ("grpo", "learner.lr_1e-05"): 0.6, ("grpo", "learner.lr_4e-05"): 0.3}
    for run in sweeps:
        fake_run(run.run_dir, {"eval/pass@1": scores[(run.arm, run.run_dir.name)]},
                 [(0, 0.1), (2, 0.1), (4, 0.1)], entropy=0.1)
    chosen = choose(spec.studies[0], sweeps)
    assert chosen == {"riskpo_paper": 4.0e-5, "grpo": 1.0e-5}
    runs = plan(spec, tmp_path / "runs", {"arith": chosen})["arith"]
    assert len(runs) == 4  # the arms may differ in the swept key: not refused as unfair
    assert {run.config.learner.lr for run in runs if run.arm == "grpo"} == {1.0e-5}
    table = sweep_table(spec.studies[0], sweeps, chosen)
    assert "| riskpo_paper | 0.200 | **0.400** |" in table and "| grpo | **0.600** | 0.300 |" in table


def test_a_sweep_that_would_start_from_another_warm_start_is_refused(tmp_path):
    """A sweep evaluating on a held-out split of its own would get a warm start of its own (the
    warm start never trains on held-out prompts): it would choose for another model."""
    spec = load_spec(write_spec(tmp_path, SWEPT.replace("data.eval_on=validation",
                                                        "data.eval.seed=5")))
    with pytest.raises(ConfigError, match="data.eval_on=validation") as error:
        plan_sweeps(spec, tmp_path / "runs")
    assert error.value.key == "studies.arith.sweep.overrides"


@pytest.mark.parametrize("name", ["ci", pytest.param("full", marks=pytest.mark.slow)])  # full: ~100
def test_the_shipped_specs_sweep_from_the_seed_runs_model(name):  # runs composed, ~15 s
    spec = load_spec(ROOT / "conf" / "compare" / f"{name}.yaml")
    sweeps = plan_sweeps(spec, ROOT / "runs" / "unused")
    assert sweeps and all(run.config.data.eval_on == "validation"
                          for runs in sweeps.values() for run in runs)


def test_diagnostics_and_matched_training_reward(tmp_path):
    spec = load_spec(write_spec(tmp_path, TWO_ARMS))
    studies = plan(spec, tmp_path / "runs")
    for run in studies["arith"]:
        slow = run.arm == "riskpo_paper"
        run.run_dir.mkdir(parents=True)
        rows = [{"step": s, "train/reward_mean": (0.1 if slow else 0.2) * s,
                 "adv/correct_negative_fraction": 0.6 if slow else 0.0} for s in range(1, 9)]
        for step in (2, 4, 6, 8):  # evaluations every 2 steps: pass@2 grows with the step
            rows[step - 1].update({"eval/pass@1": step / 20, "eval/pass@2": step / 10})
        (run.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (run.run_dir / "summary.json").write_text(json.dumps(
            {"initial": {}, "final": rows[-1], "steps": 8, "wall_s": 1.0}))
    results = [load_result(run) for run in studies["arith"]]
    grouped = {arm: [r for r in results if r.arm == arm] for arm in ("riskpo_paper", "grpo")}
    assert "| riskpo_paper | 0.60 ± 0.00 |" in diagnostics_table(grouped)
    # riskpo's reward over its last 5 steps averages 0.6; grpo's (twice as fast, smoothed over 5
    # steps) first reaches 0.6 at step 5, so grpo is taken at its next evaluation, step 6
    (line,) = matched_reward(spec.studies[0], grouped)
    assert "at training reward 0.600 (grpo taken at step 6)" in line
    assert "pass@2 0.800 vs 0.600 (+0.200)" in line


@pytest.mark.slow
def test_ci_comparison_through_the_command_line(tmp_path):
    command = [sys.executable, "-m", "launch.compare", "--spec", "conf/compare/ci.yaml",
               "--runs-dir", str(tmp_path / "runs"), "--output", str(tmp_path / "report.md")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "report.md").read_text()
    assert "4 of 4 runs finished" in text and "Learning rate, chosen per arm" in text
    chosen = json.loads((tmp_path / "report" / "chosen.json").read_text())["arithmetic"]
    for arm in ("riskpo_paper", "grpo"):
        assert chosen[arm] in (1.0e-5, 4.0e-5)
        assert f"| {arm} | {chosen[arm]} | 2 |" in text
    assert "--spec conf/compare/ci.yaml" in text  # the command that regenerates it
    figures = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"arithmetic_over_steps.png", "arithmetic_pass_at_k.png", "arithmetic_entropy.png",
            "arithmetic_all_wrong_signal.png"} <= figures
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                           check=False)
    assert again.returncode == 0 and again.stderr.count(" 0 to run") == 2  # sweep and seeds reused


@pytest.mark.slow
@pytest.mark.parametrize(("sent", "inherited", "status"), [
    (signal.SIGINT, signal.SIG_DFL, 130),  # Ctrl-C in a terminal
    (signal.SIGTERM, signal.SIG_IGN, 143),  # a scheduler stopping a background (`&`, nohup) job
])
def test_an_interrupted_comparison_stops_its_runs_and_says_how_to_resume(tmp_path, sent, inherited,
                                                                         status):
    """The runs in flight are interrupted (each says so in its console.log), none survives,
    and the line to resume is whole; also when riskpo-compare was started with SIGINT ignored,
    as a shell does for a background job (its runs must still take the interrupt it sends)."""
    spec = write_spec(tmp_path, """\
  long:
    overrides: [model.warmstart.enabled=false, trainer.total_steps=100000, trainer.eval_every=0]
    seeds: [0]
    arms:
      grpo: [algorithm=grpo]
""")
    process = subprocess.Popen(
        [sys.executable, "-m", "launch.compare", "--spec", str(spec), "--runs-dir", str(tmp_path / "runs"),
         "--output", str(tmp_path / "report.md")],
        cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, inherited))
    run_dir = tmp_path / "runs" / "long" / "grpo" / "seed0"
    deadline = time.monotonic() + 600
    while not (run_dir / "metrics.jsonl").is_file():  # the run is training
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
        time.sleep(1)
    process.send_signal(sent)
    assert process.wait(timeout=150) == status
    stderr = process.stderr.read()
    assert "interrupting long/grpo/seed0" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert "interrupted" in stderr and f"--runs-dir {tmp_path / 'runs'}" in stderr
    last = (run_dir / "console.log").read_text().splitlines()[-1]
    assert last.startswith("interrupted ") and "resume=auto" in last, last  # it was not killed
    assert not (run_dir / "summary.json").exists()
    survivors = subprocess.run(["pgrep", "-f", f"run_dir={run_dir}"], capture_output=True, text=True)
    assert survivors.stdout == "", "the interrupted run is still there"
