"""Connecting to Ray: an existing cluster when one is named, else a local one."""

from __future__ import annotations

import os

from orchestrator import console
from orchestrator.config.schema import RayConfig, Resources
from orchestrator.errors import UserInputError


class ResourceError(UserInputError):
    """The cluster cannot hold what a stage asks for."""


_started_local = False


def ensure_ray(config: RayConfig) -> bool:
    """Initialise Ray once per process; True when the Ray in use is a local one raynas started.

    Order: `ray.address` from the config, then `$RAY_ADDRESS` (set by `ray job submit`), else a
    new local cluster.
    """
    import ray

    global _started_local
    if ray.is_initialized():
        return _started_local
    address = config.address or os.environ.get("RAY_ADDRESS")
    # Ray Train copies worker prints into its logger *and* forwards stdout: each line twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if address is None:
        os.environ.update(local_cluster_env(config))
    console.capture_ray()
    try:
        ray.init(
            # "local" always starts a new cluster; None could join one left by `ray start`
            address=address or "local",
            namespace=config.namespace,
            log_to_driver=True,
            configure_logging=False,
        )
    except ConnectionError as exc:
        raise UserInputError(
            f"ray.address={address!r}: cannot connect to a Ray cluster ({exc})"
        ) from None
    console.capture_worker_output()
    _restore_python_sigterm()
    _started_local = address is None
    return _started_local


def worker_resources(resources: Resources) -> dict[str, float]:
    """Ray resources of one worker: CPUs, (fractional) GPUs, custom resources. (Ray Train takes
    the accelerator type separately, in its ScalingConfig.)"""
    need: dict[str, float] = {"CPU": resources.cpus_per_worker, **resources.custom}
    if resources.gpus_per_worker:
        need["GPU"] = resources.gpus_per_worker
    return need


def trial_resources(resources: Resources) -> dict[str, float]:
    """Ray resources of one Tune trial: `worker_resources` plus the accelerator type."""
    need = worker_resources(resources)
    if resources.accelerator_type:
        need[f"accelerator_type:{resources.accelerator_type}"] = 0.001
    return need


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


_sigterm_wanted = False
_sigterm_received = False


def on_sigterm(signum, frame) -> None:
    """SIGTERM unwinds the driver like Ctrl-C (MLflow runs end KILLED, no result written)."""
    from orchestrator.errors import Terminated

    global _sigterm_received
    _sigterm_received = True
    raise Terminated(f"received signal {signum}")


def sigterm_received() -> bool:
    """Whether this driver got SIGTERM (inside Ray's C code the exception may arrive wrapped,
    e.g. as a SystemError, so the status of what is unwinding is decided by this flag)."""
    return _sigterm_received


def install_sigterm(wanted: bool = True) -> None:
    """Route SIGTERM to :func:`on_sigterm` (or back to the default) in the main thread."""
    import signal
    import threading

    global _sigterm_wanted
    if threading.current_thread() is not threading.main_thread():
        return
    _sigterm_wanted = wanted
    signal.signal(signal.SIGTERM, on_sigterm if wanted else signal.SIG_DFL)


def _restore_python_sigterm() -> None:
    """ray.init installs its own SIGTERM handling, which aborts the driver; put raynas's back."""
    if _sigterm_wanted:
        install_sigterm(True)
