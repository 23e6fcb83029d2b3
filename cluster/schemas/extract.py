"""Regenerate the schemas in this folder from upstream files.

    python cluster/schemas/extract.py CRD_FOLDER [LAUNCHER_SCHEMA_JSON]

CRD_FOLDER holds KubeRay's ``ray.io_rayclusters.yaml`` and ``ray.io_rayjobs.yaml``
(``ray-operator/config/crd/bases`` of ray-project/kuberay at the release tag). From each CRD
the ``spec.versions[]`` entry named ``v1`` (not ``versions[0]``: ``v1alpha1`` is served too)
gives ``schema.openAPIV3Schema``, written as gzip-compressed JSON. LAUNCHER_SCHEMA_JSON is
Ray's ``ray/autoscaler/ray-schema.json`` (default: CRD_FOLDER/../ray-cluster-launcher-schema.json).

The CRD schemas are written with sorted keys, the launcher schema byte for byte; the gzip
mtime is fixed, so the same input gives the same files.
Update the version in the file names (and in ``cluster/validate.py``) when upgrading.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
KUBERAY_VERSION = "1.7.0"
RAY_VERSION = "2.60.0"
CRDS = {"rayclusters": "raycluster", "rayjobs": "rayjob"}


def v1_schema(crd_path: Path) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(crd_path.read_text(), Loader=loader)  # noqa: S506 - a safe loader
    for version in crd["spec"]["versions"]:
        if version["name"] == "v1":
            return version["schema"]["openAPIV3Schema"]
    raise SystemExit(f"{crd_path}: no spec.versions[] entry named v1")


def write(data: dict | bytes, target: Path) -> Path:
    """`data` (JSON, or bytes kept as they are) gzip-compressed into `target`, atomically."""
    if isinstance(data, bytes):
        text = data
    else:
        text = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(text)
    tmp.replace(target)
    return target


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    crd_dir = Path(argv[0])
    launcher = (
        Path(argv[1]) if len(argv) > 1 else crd_dir.parent / "ray-cluster-launcher-schema.json"
    )
    for plural, short in CRDS.items():
        schema = v1_schema(crd_dir / f"ray.io_{plural}.yaml")
        print(write(schema, HERE / f"{short}-v{KUBERAY_VERSION}.json.gz"))
    raw = launcher.read_bytes()
    json.loads(raw)  # fail here, not at validation time, on a broken file
    # kept byte for byte, so the sha256 of the decompressed file matches upstream's
    print(write(raw, HERE / f"ray-launcher-{RAY_VERSION}.json.gz"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
