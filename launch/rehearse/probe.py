"""One learner rank's memory, measured through the learner's own code: a DeepSpeedBackend
initialised from a model directory, then one step of a synthetic batch whose micro-batch fills
the token budget (the old log-probs pass, then a mini-batch's forward, backward and optimizer
step). Each phase reports the bytes its tensors held at its end and at its peak: on a GPU from
torch.cuda's allocator statistics, on a CPU from the profiler's record of every allocation and
free of torch's CPU allocator (the CPU counterpart of cuda.max_memory_allocated). The rehearsal
checks launch/memory.py against it; bench/gpu_check.py runs it on a GPU. Imports only torch,
transformers and DeepSpeed (and the project's learner).

    python -m launch.rehearse.probe '{"model_path": ..., "learner": {...}, ...}'   # prints JSON
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

PHASES = ("init", "old_logprobs", "train_step")


@dataclass
class ProbeRequest:
    """What to measure: the model, the learner and loss options (as their dataclasses' fields),
    the rows of a micro-batch (prompt and response tokens each; as many rows as fill the token
    budget), how many such micro-batches the mini-batch has (from the second on, the forward
    runs beside DeepSpeed's gradient buffers, as in a run's steady state) and the device."""

    model_path: str
    learner: dict[str, Any]
    loss: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 64
    response_tokens: int = 32
    micro_batches: int = 2
    device: str = "cpu"  # cpu | gpu
    lora: dict[str, Any] | None = None  # model.lora's fields (None: full fine-tuning)
    temperature: float = 1.0
    seed: int = 0

    @property
    def rows_per_micro_batch(self) -> int:
        return max(1, self.learner["micro_batch_token_budget"] // (self.prompt_tokens + self.response_tokens))

    @property
    def micro_batch_tokens(self) -> int:
        return self.rows_per_micro_batch * (self.prompt_tokens + self.response_tokens)


@dataclass
class PhaseMemory:
    """Bytes held by tensors before a phase, at its peak and at its end."""

    before: int
    peak: int
    end: int


class CudaTracker:
    """Phases measured with torch.cuda's allocator statistics."""

    def __init__(self) -> None:
        self.phases: dict[str, PhaseMemory] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        yield
        torch.cuda.synchronize()
        self.phases[name] = PhaseMemory(before, torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated())

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        yield


class CpuTracker:
    """Phases measured from the profiler's memory events: each allocation or free of torch's CPU
    allocator carries the running total of bytes allocated since profiling began."""

    def __init__(self) -> None:
        self.phases: dict[str, PhaseMemory] = {}
        self.events: list[dict[str, Any]] = []  # the profile's trace events, once read
        self._profile: Any = None

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as self._profile:
            yield
        self._read_phases()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with torch.profiler.record_function(f"probe/{name}"):
            yield

    def _read_phases(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "trace.json")
            self._profile.export_chrome_trace(path)
            with open(path) as handle:
                events = json.load(handle)["traceEvents"]
        self.events = events
        memory = sorted((e["ts"], e["args"]["Total Allocated"]) for e in events if e.get("name") == "[memory]")
        for event in events:
            name = str(event.get("name", ""))
            if not name.startswith("probe/") or "dur" not in event:
                continue
            start, stop = event["ts"], event["ts"] + event["dur"]
            before = [total for ts, total in memory if ts < start]
            inside = [total for ts, total in memory if start <= ts <= stop]
            begin = before[-1] if before else 0
            self.phases[name.removeprefix("probe/")] = PhaseMemory(
                begin, max([begin, *inside]), inside[-1] if inside else begin)


def _init_process_group(device: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import deepspeed

    from workers.learner.deepspeed_backend import disable_shared_memory_comm_build

    if device == "cpu":
        disable_shared_memory_comm_build()
    else:
        torch.cuda.set_device(0)
    deepspeed.init_distributed(dist_backend="nccl" if device == "gpu" else "gloo")


def synthetic_batch(request: ProbeRequest, vocab: int) -> Any:
    """The rows of request.micro_batches full micro-batches: random ordinary tokens (below
    `vocab`), unit-scale advantages."""
    from riskpo.batch import TrainBatch

    generator = torch.Generator().manual_seed(request.seed)
    rows, low = request.rows_per_micro_batch * request.micro_batches, 3
    prompts = torch.randint(low, vocab, (rows, request.prompt_tokens), generator=generator).tolist()
    responses = torch.randint(low, vocab, (rows, request.response_tokens), generator=generator).tolist()
    rollout = [[-float(torch.log(torch.tensor(float(vocab))))] * request.response_tokens] * rows
    advantages = torch.randn(rows, generator=generator)
    return TrainBatch(prompts, responses, rollout, advantages, torch.ones(rows, dtype=torch.bool),
                      loss_weights=torch.full((rows,), 1.0 / rows))


def start_learner(request: ProbeRequest) -> Any:
    """A DeepSpeedBackend of one rank (its process group started here) with the request's
    learner and loss options."""
    from riskpo.algo.losses import LossConfig
    from riskpo.models.config import LoraConfig
    from workers.learner.config import LearnerConfig, LearnerSpec
    from workers.learner.deepspeed_backend import DeepSpeedBackend

    _init_process_group(request.device)
    spec = LearnerSpec(config=LearnerConfig(**request.learner), loss=LossConfig(**request.loss),
                       device=request.device, temperature=request.temperature, seed=request.seed,
                       lora=None if request.lora is None else LoraConfig(**request.lora))
    backend = DeepSpeedBackend()
    backend.initialize(request.model_path, spec, rank=0, world_size=1)
    return backend


def train_steps(backend: Any, request: ProbeRequest, tracker: CpuTracker | CudaTracker,
                steps: int = 1) -> dict[str, Any]:
    """The old log-probs pass and `steps` updates on one synthetic mini-batch of full
    micro-batches (the first of each measured as a phase); returns the first update's metric
    sums (its mini-batch is on-policy: its ratios are 1 but for numerics) and each update's
    seconds (synchronised on a GPU)."""
    import time

    batch = synthetic_batch(request, backend.tokenizer.vocab_size)  # no special (image) tokens
    size = request.rows_per_micro_batch
    plan = [list(range(start, start + size)) for start in range(0, len(batch), size)]
    needs = backend.spec.loss.needs
    with tracker.phase("old_logprobs"):
        backend.prepare(batch, plan, needs)
    units = float(len(batch) * request.response_tokens)
    seconds, first = [], {}
    for step in range(steps):
        start = time.perf_counter()
        with tracker.phase("train_step") if step == 0 else contextlib.nullcontext():
            metrics = backend.train_step([plan], [units], step, needs)[0]
        if request.device == "gpu":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        first = first or metrics
    return {"metrics": first, "seconds": seconds, "tokens": len(batch) * (request.prompt_tokens + request.response_tokens)}


def measure(request: ProbeRequest) -> dict[str, Any]:
    """Initialises one learner rank and runs one update of a mini-batch of full micro-batches;
    returns the phases' bytes (PhaseMemory as dicts), the parameter count, the tokens of a
    micro-batch, and the update's loss and gradient norm."""
    tracker: CpuTracker | CudaTracker = CudaTracker() if request.device == "gpu" else CpuTracker()
    with tracker.session():
        with tracker.phase("init"):
            backend = start_learner(request)
        result = train_steps(backend, request, tracker)
    parameters = sum(getattr(p, "ds_numel", p.numel()) for p in backend.engine.module.parameters())
    return {"phases": {name: asdict(phase) for name, phase in tracker.phases.items()},
            "parameters": parameters, "micro_batch_tokens": request.micro_batch_tokens,
            "loss": result["metrics"]["loss"], "grad_norm": result["metrics"]["grad_norm"]}


def main(argv: list[str]) -> int:
    request = ProbeRequest(**json.loads(argv[0]))
    print(json.dumps(measure(request)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
