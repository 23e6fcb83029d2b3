"""Connecting to Ray: an existing cluster when one is named, else a local one."""

from __future__ import annotations

import os

from orchestrator.config.schema import RayConfig, Resources
from orchestrator.errors import UserInputError


class ResourceError(UserInputError):
    """The cluster cannot hold what a stage asks for."""


def ensure_ray(config: RayConfig) -> bool:
    """Initialise Ray once per process; True when this call started a local cluster.

    Order: `ray.address` from the config, then `$RAY_ADDRESS` (set by `ray job submit`), else a
    new local cluster.
    """
    import ray

    if ray.is_initialized():
        return False
    address = config.address or os.environ.get("RAY_ADDRESS")
    # Ray Train copies worker prints into its logger *and* forwards stdout: each line twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if address is None:
        os.environ.update(local_cluster_env(config))
    try:
        ray.init(
            address=address, namespace=config.namespace, log_to_driver=True, configure_logging=False
        )
    except ConnectionError as exc:
        raise UserInputError(
            f"ray.address={address!r}: cannot connect to a Ray cluster ({exc})"
        ) from None
    return address is None


def local_cluster_env(config: RayConfig) -> dict[str, str]:
    """Environment for a local Ray that raynas starts (inherited by its raylet and workers)."""
    return {"RAY_worker_niceness": str(config.worker_niceness)}


def check_fits(resources: Resources, stage: str, local: bool) -> None:
    """On a local cluster (no autoscaler), fail now instead of waiting forever for resources."""
    if not local:
        return
    import ray

    available = ray.cluster_resources()
    need = {
        "CPU": resources.workers * resources.cpus_per_worker,
        "GPU": resources.workers * resources.gpus_per_worker,
    }
    need.update({k: resources.workers * v for k, v in resources.custom.items()})
    for name, amount in need.items():
        if amount > available.get(name, 0.0) + 1e-9:
            raise ResourceError(
                f"{stage}.resources: {resources.workers} workers need {amount:g} {name} but this machine's Ray has "
                f"{available.get(name, 0.0):g}; lower {stage}.resources.workers / cpus_per_worker or connect to a cluster"
            )
