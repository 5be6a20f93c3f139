"""The bf16 learner at ZeRO stage 1 sums its micro-batches' gradients in float32 through
DeepSpeed's BF16_Optimizer (at stage 0 DeepSpeed sums them in bf16), adding each parameter's
bf16 gradient into its float32 accumulator as the backward produces it and freeing it
(`immediate_grad_update`, workers/learner/deepspeed_backend.py): the update is bit-identical to
accumulating after each backward, and no bf16 gradient outlives its micro-batch. One learner
rank in a fresh process (DeepSpeed's process group), a tiny model; slow."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from riskpo.models.tiny import build_tiny_model
from workers.learner.config import LearnerConfig, LearnerSpec
from workers.learner.deepspeed_backend import deepspeed_config, float32_gradient_accumulation

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from launch.rehearse.probe import ProbeRequest, start_learner, synthetic_batch
    from workers.learner import deepspeed_backend

    request = ProbeRequest(model_path=sys.argv[1], learner={"dtype": "bfloat16", "zero_stage": 1,
                           "micro_batch_token_budget": 24, "lr": 1e-2}, prompt_tokens=4,
                           response_tokens=4, micro_batches=3)
    configure = deepspeed_backend.deepspeed_config

    def deferred(spec, world_size):  # accumulate after each backward (DeepSpeed's default)
        config = configure(spec, world_size)
        config["bf16"] = {**config["bf16"], "immediate_grad_update": False}
        return config

    results = {}
    for name in ("immediate", "deferred"):
        deepspeed_backend.deepspeed_config = configure if name == "immediate" else deferred
        backend = start_learner(request)
        batch = synthetic_batch(request, backend.tokenizer.vocab_size)
        size = request.rows_per_micro_batch
        plan = [list(range(start, start + size)) for start in range(0, len(batch), size)]
        backend.prepare(batch, plan, backend.spec.loss.needs)
        held, backward = [], backend.backward

        def counted(loss, *, last_micro_batch, backward=backward, held=held):
            backward(loss, last_micro_batch=last_micro_batch)
            held.append(sum(p.grad is not None for p in backend.engine.module.parameters()))

        backend.backward = counted
        metrics = backend.train_step([plan], [float(len(batch) * 4)], 0, backend.spec.loss.needs)[0]
        module = backend.engine.module
        results[name] = {
            "optimizer": type(backend.engine.optimizer).__name__,
            "held_grads": held,  # bf16 gradients held after each micro-batch's backward
            "grad_norm": metrics["grad_norm"],
            "weights": {n: p.detach().float().flatten().tolist() for n, p in module.named_parameters()},
        }
    print(json.dumps(results))
""")


@pytest.mark.parametrize(("zero_stage", "offload", "float32_sums"), [
    (0, False, False), (1, False, True), (1, True, False), (2, False, False), (3, False, False)])
def test_a_bf16_learner_asks_for_float32_sums_where_deepspeed_takes_them(zero_stage, offload, float32_sums):
    config = LearnerConfig(dtype="bfloat16", zero_stage=zero_stage, offload=offload)
    assert float32_gradient_accumulation(config) is float32_sums
    ds_config = deepspeed_config(LearnerSpec(config), world_size=1)
    assert ("data_types" in ds_config) is float32_sums
    assert not float32_gradient_accumulation(LearnerConfig(dtype="float32", zero_stage=1))


@pytest.mark.slow
def test_immediate_bf16_accumulation_is_exact_and_frees_bf16_gradients(tmp_path: Path) -> None:
    model_path = build_tiny_model(tmp_path / "tiny")
    completed = subprocess.run([sys.executable, "-c", SCRIPT, str(model_path)], cwd=ROOT,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    immediate, deferred = results["immediate"], results["deferred"]
    assert immediate["optimizer"] == deferred["optimizer"] == "BF16_Optimizer"  # float32 sums
    assert len(deferred["held_grads"]) == 3 and min(deferred["held_grads"]) > 0  # the default's
    assert immediate["held_grads"] == [0, 0, 0]
    assert immediate["grad_norm"] == deferred["grad_norm"]
    assert immediate["weights"].keys() == deferred["weights"].keys()
    for name, values in immediate["weights"].items():
        assert values == deferred["weights"][name], name
