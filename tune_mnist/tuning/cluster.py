"""Check --address and start or join Ray, settle the resources a trial takes, give a trial its device."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

import ray
import torch

from tune_mnist.errors import UserError
from tune_mnist.warmup import use_tf32

CLIENT_ATTEMPTS = 4
CLIENT_PORT = 10001  # Ray Client's port where ray://host names none
CONNECT_TIMEOUT_S = 3.0
ADDRESS_FORMS = "local, auto, host:port or ray://host[:port], with a port from 1 to 65535"
_HOST = r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
_ENDPOINT = re.compile(_HOST + r":(?P<port>[0-9]{1,5})")
_CLIENT = re.compile("ray://" + _HOST + r"(?::(?P<port>[0-9]{1,5}))?")


@dataclass
class Resources:
    address: str = "local"         # "local" starts Ray here; "auto" or "ray://host:port" joins a cluster
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0    # a share of one GPU; 0.25 packs four trials on a GPU
    max_concurrent: int = 0        # 0: as many as the resources allow
    max_failures: int = 0          # retries of a trial that raised
    storage: str = ""              # this run's folder in shared storage (storage.py); "": the run folder


def endpoint(address: str) -> tuple[str, int] | None:
    """The host and port an --address names (None for local and auto); UserError, one line, for anything else."""
    if address in ("local", "auto"):
        return None
    match = _ENDPOINT.fullmatch(address) or _CLIENT.fullmatch(address)
    port = int(match["port"] or CLIENT_PORT) if match else 0
    if not 1 <= port <= 65535:
        raise UserError(f"--address {address!r} is not {ADDRESS_FORMS}")
    return match["host"].strip("[]"), port


def probe(address: str) -> None:
    """Fails fast, within seconds and open to Ctrl-C, where nobody listens or what listens is no Ray (Ray's own
    connect retries for minutes, logging all the while, and holds Ctrl-C off): a TCP connect, then the start of a
    gRPC connection, which the GCS and Ray Client's server both answer."""
    import grpc

    if (found := endpoint(address)) is None:
        return
    host, port = found
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UserError(f"cannot reach a Ray cluster at --address {address}: {e.strerror or e}") from None
    channel = grpc.insecure_channel(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
    except grpc.FutureTimeoutError:
        raise UserError(f"cannot reach a Ray cluster at --address {address}: what listens there does not answer "
                        f"as Ray does within {CONNECT_TIMEOUT_S:g} s") from None
    finally:
        channel.close()


def quiet_ray() -> None:
    """Keeps Ray's token-authentication notice off stderr, where a refusal must be the only line (the README says
    how to share or disable the token)."""
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def private_files() -> None:
    """From here on, what this command writes (the run folder, Ray's state) no one else may write: a resume reads
    Ray's pickled state only from such a folder (runner.check_trusted), so a umask that lets the group write would
    make every run unresumable."""
    os.umask(os.umask(0) | 0o022)


def local_gpu() -> bool:
    """Whether this machine has a GPU (a local Ray's trials will train on it)."""
    return torch.cuda.is_available()


def connect(address: str) -> bool:
    """Starts or joins Ray; whether the cluster has GPUs. A bad or unreachable address is a UserError, within
    seconds."""
    endpoint(address)
    quiet_ray()
    private_files()
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        probe(address)
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
