"""Connecting to Ray: an existing cluster when one is named, else a local one."""

from __future__ import annotations

import os

from orchestrator import console
from orchestrator.config.schema import RayConfig, Resources, RunConfig
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
            **({} if address else {"include_dashboard": config.dashboard}),
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


def local_cluster_env(config: RayConfig) -> dict[str, str]:
    """Environment for a local Ray that raynas starts (inherited by its raylet and workers)."""
    return {"RAY_worker_niceness": str(config.worker_niceness)}


def place(config: RunConfig, stage: str, resources: Resources, *, training: bool = False):
    """Where `stage`'s workers run (`cluster.placement.Placement`), from its resources and the
    run's cluster spec; a placement that cannot be expressed is one ResourceError line."""
    from cluster.placement import Need, PlacementError, resolve

    need = Need(
        cpus=resources.cpus_per_worker,
        gpus=resources.gpus_per_worker,
        custom=dict(resources.custom),
        accelerator_type=resources.accelerator_type,
    )
    try:
        return resolve(stage, need, resources.placement, config.cluster, training=training)
    except PlacementError as exc:
        raise ResourceError(str(exc)) from None


def check_placement(config: RunConfig, placement, workers: int, local: bool) -> None:
    """Pre-flight: fail now, in one line, when nothing can hold `workers` of `placement`,
    instead of waiting forever. Checked against the cluster spec's groups at their maximum size
    (an autoscaling cluster), else against the live nodes (a fixed cluster, a local Ray). A
    remote cluster without a spec is not checked: its autoscaler may add what is missing."""
    import ray

    from cluster.placement import PlacementError, live_nodes, preflight, spec_nodes

    spec = config.cluster
    if spec is not None and spec.autoscaling and not local:
        nodes, source = spec_nodes(spec), f"cluster {spec.name} at its maximum size"
    elif local:
        nodes, source = live_nodes(ray.nodes()), "this machine's Ray"
    elif spec is not None:
        nodes, source = live_nodes(ray.nodes()), f"the live nodes of cluster {spec.name}"
    else:
        return
    try:
        preflight(placement, workers, nodes, source=source)
    except PlacementError as exc:
        raise ResourceError(str(exc)) from None


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
