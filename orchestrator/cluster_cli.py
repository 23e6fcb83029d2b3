"""`raynas cluster ...`: render and check the manifests of a heterogeneous Ray cluster.

`render` turns a cluster spec (configs/cluster-hetero.yaml) into KubeRay manifests and/or a
`ray up` config, validated offline before anything is written; `validate` checks manifests
written by hand the same way. Bad input ends in one `error: ...` line per problem on stderr:
exit code 2 for `render` (nothing is written), 1 for `validate`.

Imports stay inside the commands: `raynas --help` must not pay for them.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

cluster_app = typer.Typer(
    help="Render and check manifests for a heterogeneous Ray cluster (KubeRay, `ray up`).",
    no_args_is_help=True,
)

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

BAD_INPUT = 2


def _fail(lines: list[str], code: int = BAD_INPUT) -> NoReturn:
    from orchestrator.secrets import redact

    for line in lines:
        err.print(f"error: {redact(line)}", markup=False)
    raise typer.Exit(code)


def _load(path: Path):
    from orchestrator.config.loader import load_cluster_spec
    from orchestrator.errors import ConfigError

    try:
        return load_cluster_spec(path)
    except ConfigError as exc:
        _fail(str(exc).splitlines())


def _next_steps(spec, paths: dict[str, Path]) -> list[str]:
    from cluster.manifests import has_secret_ref, secret_name

    ns = f" -n {spec.namespace}" if spec.namespace else ""
    lines: list[str] = []
    if "raycluster.yaml" in paths:
        secret = secret_name(spec)
        lines.append("KubeRay (the operator must be >= " + spec.kuberay_version + "):")
        if has_secret_ref(spec):
            lines.append(
                f"  kubectl create secret generic {secret}{ns} "
                '--from-literal=auth_token="$(openssl rand -hex 32)"   # once: Ray\'s token'
            )
        cluster = shlex.quote(str(paths["raycluster.yaml"]))
        lines.append(f"  kubectl apply{ns} -f {cluster}   # a long-lived cluster")
        if "rayjob.yaml" in paths:
            job = shlex.quote(str(paths["rayjob.yaml"]))
            lines.append(
                f"  kubectl apply{ns} -f {job}   # or: its own cluster, runs `raynas run`, "
                "then is deleted (apply one of the two)"
            )
        if has_secret_ref(spec):
            lines.append(
                f'  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(kubectl get secret {secret}{ns} '
                "-o jsonpath='{.data.auth_token}' | base64 -d)\"   # for ray job submit / the dashboard"
            )
    if "ray-up.yaml" in paths:
        config = shlex.quote(str(paths["ray-up.yaml"]))
        lines += [
            "ray up:",
            "  ray get-auth-token --generate   # once: ~/.ray/auth_token, copied to every node",
            f"  ray up {config}",
            f"  RAY_AUTH_MODE=token ray dashboard {config}   # then RAY_AUTH_MODE=token ray job submit ...",
        ]
    return lines


@cluster_app.command("render")
def render(
    spec_path: Annotated[
        Path, typer.Argument(metavar="SPEC", help="Cluster spec (YAML).", show_default=False)
    ],
    kuberay: Annotated[
        bool, typer.Option("--kuberay", help="Write raycluster.yaml (and rayjob.yaml with `job`).")
    ] = False,
    launcher: Annotated[
        bool, typer.Option("--launcher", help="Write ray-up.yaml, a `ray up` config.")
    ] = False,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder to write to (default: manifests/NAME)."),
    ] = None,
) -> None:
    """Render a cluster spec as KubeRay manifests and/or a `ray up` config, validated offline."""
    if not (kuberay or launcher):
        _fail(["give --kuberay, --launcher or both"])
    spec = _load(spec_path)
    from cluster.manifests import (
        ManifestError,
        notes,
        render_kuberay,
        render_launcher,
        write_manifests,
    )

    folder = out_dir if out_dir is not None else Path("manifests") / spec.name
    if folder.exists() and not folder.is_dir():
        _fail([f"--out {folder}: exists and is not a folder"])
    try:
        docs = [
            *(render_kuberay(spec) if kuberay else []),
            *([render_launcher(spec)] if launcher else []),
        ]
        written = write_manifests(docs, folder)
    except ManifestError as exc:
        _fail([f"{spec_path}: {line}" for line in exc.problems])
    except OSError as exc:
        _fail([f"--out {folder}: cannot write: {exc.strerror or exc}"])
    for path in written:
        out.print(f"wrote {path}")
    for note in notes(spec):
        out.print(f"note: {note}")
    for line in _next_steps(spec, {p.name: p for p in written}):
        out.print(line, markup=False)


@cluster_app.command("validate")
def validate(
    files: Annotated[
        list[Path],
        typer.Argument(
            metavar="FILE...",
            help="RayCluster / RayJob manifests or `ray up` configs (YAML, several documents allowed).",
            show_default=False,
        ),
    ],
) -> None:
    """Check manifests offline against KubeRay's CRD schemas (strict) and the operator's rules,
    or `ray up` configs against Ray's launcher schema (exit 1 on any problem)."""
    from cluster.validate import check_file

    problems: list[str] = []
    for path in files:
        report = check_file(path)
        if report.problems:
            prefix = f"{path}: "
            problems += [p if p.startswith(prefix) else prefix + p for p in report.problems]
        else:
            out.print(f"[green]ok[/green] {path}: {', '.join(report.titles)}")
    if problems:
        _fail(problems, code=1)


def summarize_spec(path: Path, overrides: list[str] | None = None) -> str:
    """`raynas validate` on a cluster spec: validate it and say what it describes in one line."""
    from orchestrator.config.loader import load_cluster_spec
    from orchestrator.errors import ConfigError

    if overrides:
        raise ConfigError("command line", ["--set applies to run configs, not to cluster specs"])
    spec = load_cluster_spec(path)
    groups = []
    for group in spec.groups:
        size = f"{group.min_replicas}-{group.max_replicas}"
        what = f"{group.gpus}x {group.accelerator}" if group.gpus else f"{group.cpus} CPUs"
        groups.append(f"{group.name} {size} x {what}")
    accelerators = sorted({g.accelerator for g in spec.groups if g.accelerator}) or ["none"]
    workers = sum(g.max_replicas for g in spec.groups)
    return (
        f"cluster {spec.name}: {len(spec.groups)} groups ({'; '.join(groups)}), accelerators "
        f"{', '.join(accelerators)}, at most {workers + 1} nodes (head + {workers} workers)"
    )


@cluster_app.command("node-args")
def node_args(
    spec_path: Annotated[
        Path, typer.Argument(metavar="SPEC", help="Cluster spec (YAML).", show_default=False)
    ],
    group: Annotated[str, typer.Argument(metavar="GROUP", help="One of the spec's groups.")],
) -> None:
    """Print the `ray start` arguments that make a hand-started node one of GROUP's nodes
    (CPUs, GPUs, labels, resources): `ray start --address=HEAD:6379 $(raynas cluster node-args
    SPEC GROUP)`."""
    from cluster.placement import group_node_args

    spec = _load(spec_path)
    try:
        chosen = spec.group(group)
    except KeyError:
        _fail(
            [f"{spec_path}: no group {group!r}; groups: " + ", ".join(g.name for g in spec.groups)]
        )
    out.print(" ".join(group_node_args(chosen)), markup=False)
