"""Joining a Ray cluster, and knowing whether it can ever hold a trial, so a study never hangs
without saying why.

Ray itself retries a dead head's address for minutes ("Failed to connect to GCS") and waits
forever for resources no node has. Here an address is probed first (a head that died leaves its
address in Ray's session files), and a trial's request is compared with what the cluster's
nodes, or the node types its autoscaler may add, hold.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import yaml

from rankstudy.core.spec import StudySpec

PROBE_SECONDS = 3.0
AUTOSCALER_CONFIG = Path.home() / "ray_bootstrap_config.yaml"  # on the head of `ray up`


class ClusterError(RuntimeError):
    """The cluster cannot run the study; the message names the address or spec field."""


def answers(address: str) -> bool:
    """Whether anything accepts a connection at the address (host:port, any scheme)."""
    host, _, port = address.split("://")[-1].rstrip("/").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_SECONDS).close()
    except (OSError, ValueError):
        return False
    return True


def recorded_address() -> tuple[str | None, str]:
    """The head the last `ray start` on this machine recorded, and the file it is in."""
    from ray._common.utils import get_ray_address_file

    path = get_ray_address_file(None)
    return (Path(path).read_text().strip() or None if os.path.exists(path) else None), path


def connect_ray(address: str | None, extra_cpus: int = 0) -> None:
    """Join the cluster of `ray job submit` ($RAY_ADDRESS) or --address, else the head recorded
    on this machine if it is alive, else start a Ray for this process alone. extra_cpus: logical
    CPUs beyond the cores, for the drivers of multi-worker trials."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    own = {"num_cpus": os.cpu_count() + extra_cpus, "include_dashboard": False}
    if address == "local":
        ray.init(address="local", **own)
        return
    if address:
        if not answers(address):
            raise ClusterError(
                f"--address / RAY_ADDRESS: nothing answers at {address}; start the cluster, "
                f"fix the address, or pass --address local for a Ray of this study's own"
            )
        ray.init(address=address)
        return
    recorded, path = recorded_address()
    if recorded and answers(recorded):
        ray.init(address=recorded)
        return
    if recorded:
        print(
            f"rankstudy: the Ray head recorded in {path} ({recorded}) does not answer (it has "
            f"stopped or died); starting a Ray for this study alone",
            flush=True,
        )
    ray.init(address="local", **own)


def node_types() -> dict[str, dict[str, float]]:
    """The resources of each kind of node the cluster has or may get: the nodes alive now, and
    its autoscaler's node types."""
    import ray

    types = {n["NodeID"][:8]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    if AUTOSCALER_CONFIG.is_file():
        config = yaml.safe_load(AUTOSCALER_CONFIG.read_text())
        for name, t in (config.get("available_node_types") or {}).items():
            types[name] = {k: float(v) for k, v in (t.get("resources") or {}).items()}
    return types


def check_resources(spec: StudySpec, types: dict[str, dict[str, float]], scales: bool) -> None:
    """Refuse a trial that the cluster can never hold. scales: an autoscaler may add nodes of
    these types, so a trial's bundles only need a type each; otherwise the nodes there now must
    hold them all together."""
    have = "; ".join(
        f"{name}: " + ", ".join(f"{k} {v:g}" for k, v in sorted(r.items()) if k in ("CPU", "GPU"))
        for name, r in types.items()
    )
    from rankstudy.trial.trainable import trial_bundles

    bundles = trial_bundles(spec)
    for bundle in bundles:
        if not any(all(n.get(k, 0) >= v for k, v in bundle.items()) for n in types.values()):
            gpu_missing = "GPU" in bundle and not any(n.get("GPU", 0) for n in types.values())
            field = "resources.use_gpu" if gpu_missing else "resources.cpus_per_worker"
            raise ClusterError(
                f"{field}: a trial needs {bundle} on one node, and no node of the cluster has "
                f"it ({have})"
            )
    need = {k: sum(b.get(k, 0) for b in bundles) for k in ("CPU", "GPU")}
    total = {k: sum(n.get(k, 0) for n in types.values()) for k in ("CPU", "GPU")}
    short = [k for k in need if need[k] > total[k]]
    if short and not scales:
        raise ClusterError(
            f"resources.workers: a trial of {spec.resources.workers} worker(s) needs "
            f"{', '.join(f'{k} {need[k]:g}' for k in short)} at once; the cluster has "
            f"{', '.join(f'{k} {total[k]:g}' for k in short)} and no autoscaler to add more "
            f"({have})"
        )


def check_cluster(spec: StudySpec) -> None:
    """check_resources on the cluster this process joined."""
    check_resources(spec, node_types(), scales=AUTOSCALER_CONFIG.is_file())
