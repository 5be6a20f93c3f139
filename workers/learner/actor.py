"""The Ray actor of one learner rank: sets up torch.distributed from its rank and the
rendezvous address, runs a backend (DeepSpeed), and sends weights when it is rank 0."""

from __future__ import annotations

import importlib
import os
import socket
from typing import Any

import ray
import torch

from riskpo.algo.losses import LearnerNeeds
from riskpo.batch import TrainBatch
from workers.learner.base import LearnerBackend
from workers.learner.config import LearnerSpec
from workers.learner.microbatch import RankPlan
from workers.weight_sync import (
    BroadcastSender,
    SyncGroupAddress,
    TensorSpec,
    WeightManifest,
    make_sender,
)

BACKENDS = {"deepspeed": "workers.learner.deepspeed_backend:DeepSpeedBackend"}


def free_port() -> int:
    """A TCP port that is free on this node right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


class LearnerWorker:
    """One data-parallel rank. Every method that touches parameters must be called on all
    ranks at once (the group does that)."""

    def __init__(self, rank: int, world_size: int, spec: LearnerSpec) -> None:
        self.rank, self.world_size, self.spec = rank, world_size, spec
        self.backend: LearnerBackend | None = None
        self.sender: BroadcastSender | None = None

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()

    def reserve_port(self) -> int:
        return free_port()

    def setup(self, model_path: str, master_addr: str, master_port: int, local_rank: int) -> None:
        """Joins the learners' default process group and builds the backend."""
        if self.spec.device == "gpu":
            # Ray shows each rank exactly its own GPU (CUDA_VISIBLE_DEVICES), which is then
            # device 0 in this process; DeepSpeed picks its device from LOCAL_RANK.
            local_rank = 0
        os.environ.update(
            RANK=str(self.rank),
            LOCAL_RANK=str(local_rank),
            WORLD_SIZE=str(self.world_size),
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
        )
        if self.spec.device == "gpu":
            torch.cuda.set_device(0)
        import deepspeed

        from workers.learner.deepspeed_backend import disable_shared_memory_comm_build

        if self.spec.device == "cpu":
            disable_shared_memory_comm_build()
        deepspeed.init_distributed(dist_backend="nccl" if self.spec.device == "gpu" else "gloo")
        module_name, class_name = BACKENDS[self.spec.config.strategy].split(":")
        self.backend = getattr(importlib.import_module(module_name), class_name)()
        self.backend.initialize(model_path, self.spec, self.rank, self.world_size)

    def prepare(self, batch: TrainBatch, plan: RankPlan, needs: LearnerNeeds, *,
                old_logprobs_pass: bool = True) -> dict[str, float]:
        return self._backend().prepare(batch, plan, needs, old_logprobs_pass=old_logprobs_pass)

    def train_step(self, plans: list[RankPlan], loss_units: list[float], step: int,
                   needs: LearnerNeeds) -> list[dict[str, float]]:
        return self._backend().train_step(plans, loss_units, step, needs)

    def save(self, path: str, extra: dict[str, Any]) -> None:
        self._backend().save(path, extra)

    def load(self, path: str) -> dict[str, Any]:
        return self._backend().load(path)

    def export_hf(self, path: str) -> None:
        self._backend().export_hf(path)

    def parameter_specs(self) -> list[TensorSpec]:
        return self._backend().parameter_specs()

    def adapter_specs(self) -> tuple[list[TensorSpec], dict[str, Any]]:
        return self._backend().adapter_specs()

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full parameters as CPU tensors on rank 0 (None elsewhere); gathers on every rank."""
        state = {name: t.detach().to("cpu", copy=True) for name, t in self._backend().named_parameters()}
        return state if self.rank == 0 else None

    def open_weight_sender(self, address: SyncGroupAddress) -> None:
        """Rank 0 hosts the weight-sync group's store and joins as its sender."""
        if self.rank == 0:
            self.sender = make_sender(address)

    def send_weights(self, manifest: WeightManifest) -> int:
        """Rank 0 broadcasts; the others take part in the layer-by-layer ZeRO-3 gathers. The
        manifest says what goes: the policy's weights (LoRA merged in), or the adapter's alone."""
        backend = self._backend()
        parameters = backend.named_parameters() if manifest.adapter is None else backend.adapter_tensors()
        if self.rank != 0:
            for _ in parameters:
                pass
            return 0
        if self.sender is None:
            raise RuntimeError("send_weights before open_weight_sender")
        return self.sender.send(manifest, parameters)

    def _backend(self) -> LearnerBackend:
        if self.backend is None:
            raise RuntimeError(f"learner rank {self.rank}: setup() has not run")
        return self.backend
