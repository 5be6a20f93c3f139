"""riskpo-submit without a cluster: sweep expansion, runtime_env, job submission and following."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from ray._private.runtime_env.packaging import _get_excludes

from launch import submit


def _options(**kwargs) -> submit.SubmitOptions:
    return submit.SubmitOptions(address="http://head:8265", **kwargs)


def test_sweep_expands_into_one_run_per_point() -> None:
    runs = submit.expand_overrides(["algorithm=riskpo,grpo", "seed=0,1", "trainer.total_steps=3"],
                                   multirun=True)
    assert runs == [
        ["algorithm=riskpo", "seed=0", "trainer.total_steps=3"],
        ["algorithm=riskpo", "seed=1", "trainer.total_steps=3"],
        ["algorithm=grpo", "seed=0", "trainer.total_steps=3"],
        ["algorithm=grpo", "seed=1", "trainer.total_steps=3"],
    ]


def test_hydra_sweep_syntax_range_and_quoted_values() -> None:
    runs = submit.expand_overrides(["seed=range(3)", "+tag='a,b'"], multirun=True)
    assert runs == [["seed=0", "+tag='a,b'"], ["seed=1", "+tag='a,b'"], ["seed=2", "+tag='a,b'"]]


def test_single_run_keeps_overrides_and_refuses_a_sweep_without_m() -> None:
    assert submit.expand_overrides(["seed=3"], multirun=False) == [["seed=3"]]
    assert submit.expand_overrides([], multirun=False) == [[]]
    with pytest.raises(ValueError, match=r"seed=0,1.*-m"):
        submit.expand_overrides(["seed=0,1"], multirun=False)
    with pytest.raises(ValueError, match="cannot parse"):
        submit.expand_overrides(["seed=(("], multirun=True)


def test_plan_gives_each_run_its_own_job_and_run_dir() -> None:
    runs = submit.plan_runs(["seed=0,1"], True, _options(runs_root="/shared/runs/"))
    assert len({run.submission_id for run in runs}) == 2
    for run, seed in zip(runs, ("0", "1"), strict=True):
        assert run.overrides == [f"seed={seed}", f"run_dir='/shared/runs/{run.submission_id}'"]
        assert run.run_dir == f"/shared/runs/{run.submission_id}"
        assert shlex.split(run.entrypoint) == ["python", "-m", "launch.train", *run.overrides]
        assert re.fullmatch(rf"riskpo-seed-{seed}-[0-9a-f]{{8}}", run.submission_id)


def test_generated_overrides_parse_in_hydra_whatever_the_path() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    options = _options(runs_root="/shared/my runs,v2=new")
    (run,) = submit.plan_runs(["+data.path=x", "algorithm.options.beta=0.9"], False, options)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", run.submission_id), run.submission_id
    parsed = OverridesParser.create().parse_overrides(run.overrides)
    assert parsed[-1].value() == f"/shared/my runs,v2=new/{run.submission_id}"


def test_an_explicit_run_dir_wins_over_runs_root() -> None:
    (run,) = submit.plan_runs(["run_dir=/x/y"], False, _options(runs_root="/shared"))
    assert run.overrides == ["run_dir=/x/y"]


def test_runtime_env_ships_code_but_not_git_checkpoints_data_or_venvs(tmp_path: Path) -> None:
    options = _options(env_vars={"WANDB_MODE": "offline"}, pip_packages=["vllm==0.33.0"])
    runtime_env = submit.build_runtime_env(options)
    assert runtime_env["working_dir"] == str(submit.PROJECT_ROOT)
    assert runtime_env["env_vars"] == {"WANDB_MODE": "offline"}
    assert runtime_env["pip"] == ["vllm==0.33.0"]
    excluded = _get_excludes(tmp_path, runtime_env["excludes"])  # Ray's own matcher
    for path in (".git/HEAD", "checkpoints/step_3/model.pt", "outputs/runs/x/metrics.jsonl",
                 "data/gsm8k/train.parquet", ".venv/bin/python", ".venv-vllm/bin/python",
                 "riskpo/__pycache__/risk.cpython-311.pyc", "runs/a/summary.json"):
        assert excluded(tmp_path / path), path
    for path in ("riskpo/data/sampler.py", "launch/train.py", "conf/config.yaml",
                 "workers/verifier/checkpoints_util.py"):
        assert not excluded(tmp_path / path), path


def test_environment_variables_from_flags_and_wandb() -> None:
    assert submit.parse_env_assignments(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(ValueError, match="'NOEQUALS'"):
        submit.parse_env_assignments(["NOEQUALS"])
    environ = {"WANDB_API_KEY": "k", "WANDB_PROJECT": "p", "HOME": "/root", "MY_WANDB": "no"}
    assert submit.forwarded_environment(environ) == {"WANDB_API_KEY": "k", "WANDB_PROJECT": "p"}


class _Status(str):
    @property
    def value(self) -> str:
        return str(self)


class FakeJobClient:
    """Records submissions; each job 'logs' two lines and ends with the status given."""

    def __init__(self, final_status: dict[str, str] | None = None) -> None:
        self.submitted: list[dict] = []
        self.final_status = final_status or {}

    def submit_job(self, **kwargs) -> str:
        self.submitted.append(kwargs)
        return kwargs["submission_id"]

    def get_job_status(self, job_id: str) -> _Status:
        return _Status(self.final_status.get(job_id, "SUCCEEDED"))

    async def tail_job_logs(self, job_id: str):
        for line in (f"{job_id} started\n", f"{job_id} done\n"):
            yield line


def test_submit_and_follow_with_a_fake_client(capsys) -> None:
    options = _options(env_vars={"K": "V"}, entrypoint_resources={"verifier_node": 1.0})
    runs = submit.plan_runs(["seed=0,1"], True, options)
    client = FakeJobClient({runs[1].submission_id: "FAILED"})
    job_ids = submit.submit_runs(client, runs, options)
    assert job_ids == [run.submission_id for run in runs]
    first = client.submitted[0]
    assert first["entrypoint"] == runs[0].entrypoint
    assert first["runtime_env"]["env_vars"] == {"K": "V"}
    assert first["entrypoint_resources"] == {"verifier_node": 1.0}
    assert first["metadata"] == {"riskpo_overrides": "seed=0"}
    statuses = submit.follow_jobs(client, job_ids)
    assert statuses == {job_ids[0]: "SUCCEEDED", job_ids[1]: "FAILED"}
    assert submit.exit_code(statuses) == 1
    assert submit.exit_code({job_ids[0]: "SUCCEEDED"}) == 0
    assert f"{job_ids[1]} done" in capsys.readouterr().out


def test_cli_needs_an_address(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        submit.main(["seed=1"])
    assert exit_info.value.code == 2


def test_cli_dry_run_prints_one_job_per_sweep_point(capsys, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_PROJECT", "riskpo")
    assert submit.main(["--dry-run", "-m", "algorithm=riskpo,grpo", "--", "seed=0"]) == 0
    out = capsys.readouterr().out
    assert "'WANDB_PROJECT': 'riskpo'" in out
    assert out.count("python -m launch.train") == 2
    assert "algorithm=grpo seed=0" in out


def test_summary_of_the_submitted_runs_that_are_visible(tmp_path: Path) -> None:
    runs = submit.plan_runs(["seed=0,1"], True, _options(runs_root=str(tmp_path)))
    assert submit.summarize_runs(runs) is None  # nothing written yet
    for run, seed in zip(runs, (0, 1), strict=True):
        Path(run.run_dir).mkdir()
        (Path(run.run_dir) / "config.yaml").write_text(f"seed: {seed}\n")
        summary = {"final": {"eval/avg@8": 0.5 + seed / 10}, "steps": 3, "wall_s": 1.0}
        (Path(run.run_dir) / "summary.json").write_text(json.dumps(summary))
    summary = submit.summarize_runs(runs)
    assert summary == tmp_path / "sweep_summary.md"
    text = summary.read_text()
    assert f"| {runs[0].submission_id} | 0 | 0.5 |" in text
    assert f"| {runs[1].submission_id} | 1 | 0.6 |" in text


def test_run_dir_from_the_overrides_is_remembered() -> None:
    (run,) = submit.plan_runs(["+run_dir='/x/y'"], False, _options())
    assert run.run_dir == "/x/y"
    (run,) = submit.plan_runs(["seed=1"], False, _options())
    assert run.run_dir is None


def test_working_dir_must_be_a_checkout(tmp_path: Path) -> None:
    assert submit.check_working_dir(submit.PROJECT_ROOT) == submit.PROJECT_ROOT
    with pytest.raises(ValueError, match=r"not a RiskPO-RL checkout .*pyproject.toml"):
        submit.check_working_dir(tmp_path)


def test_project_extras_become_pip_requirements() -> None:
    requirements = submit.project_extra_requirements(submit.PROJECT_ROOT, ["gpu"])
    assert any(requirement.startswith("vllm") for requirement in requirements)
    with pytest.raises(ValueError, match=r"'nope'.*\['dev', 'gpu'\]"):
        submit.project_extra_requirements(submit.PROJECT_ROOT, ["nope"])
