"""Start or join Ray, settle the resources a trial takes, and give a trial the device Ray assigned it."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import ray
import torch

from tune_mnist.errors import UserError
from tune_mnist.warmup import use_tf32

CLIENT_ATTEMPTS = 4


@dataclass
class Resources:
    address: str = "local"         # "local" starts Ray here; "auto" or "ray://host:port" joins a cluster
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0    # a share of one GPU; 0.25 packs four trials on a GPU
    max_concurrent: int = 0        # 0: as many as the resources allow
    max_failures: int = 0          # retries of a trial that raised
    storage: str = ""              # this run's folder in shared storage (storage.py); "": the run folder


def _probe(address: str) -> None:
    """Fails fast on a host:port nobody listens on; ray.init would retry for ~20 s, logging all the while."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise UserError(f"cannot reach a Ray cluster at --address {address}: {e.strerror or e}") from None


def local_gpu() -> bool:
    """Whether this machine has a GPU (a local Ray's trials will train on it)."""
    return torch.cuda.is_available()


def connect(address: str) -> bool:
    """Starts or joins Ray; whether the cluster has GPUs."""
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        _probe(address)
        for attempt in range(CLIENT_ATTEMPTS):
            try:
                ray.init(address=address, include_dashboard=False, configure_logging=False,
                         log_to_driver=address.startswith("ray://"))  # a Ray Client run prints on the cluster
                break
            except (ConnectionError, RuntimeError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                # Ray Client's server fails to start on a head that has only just come up (its runtime-env
                # agent is not ready yet); a few seconds later it starts
                if "Initialization failure from server" in first and attempt + 1 < CLIENT_ATTEMPTS:
                    time.sleep(5)
                    continue
                raise UserError(f"cannot reach a Ray cluster at --address {address}: {first}") from None
    return ray.cluster_resources().get("GPU", 0) > 0


def check(res: Resources) -> None:
    """A trial must fit the cluster, or Tune would wait for it forever."""
    have = ray.cluster_resources()
    for kind, need in (("GPU", res.gpus_per_trial), ("CPU", res.cpus_per_trial)):
        if need > have.get(kind, 0):
            raise UserError(f"a trial asks for {need:g} {kind} but the Ray cluster has {have.get(kind, 0):g}")


def trial_slots(res: Resources) -> float:
    """How many trials the connected cluster holds at once: the scarcest resource decides (ray#28292)."""
    have = ray.cluster_resources()
    slots = have.get("CPU", 0) / res.cpus_per_trial
    if res.gpus_per_trial:
        slots = min(slots, have.get("GPU", 0) / res.gpus_per_trial)
    return slots


def trial_device() -> torch.device:
    """The GPU Ray assigned to this trial (it sets CUDA_VISIBLE_DEVICES), else the CPU."""
    if torch.cuda.is_available() and ray.get_gpu_ids():
        share = ray.get_runtime_context().get_assigned_resources().get("GPU", 1.0)
        if share < 1:  # Ray counts fractions but never enforces them: cap this trial's allocator
            torch.cuda.set_per_process_memory_fraction(share)
        use_tf32()
        return torch.device("cuda")
    return torch.device("cpu")


def placement(device: torch.device) -> dict[str, Any]:
    """Where and when a trial ran: its rows show the spread over nodes and GPUs."""
    return {"device": device.type, "node_id": ray.get_runtime_context().get_node_id(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "started_at": time.time()}
