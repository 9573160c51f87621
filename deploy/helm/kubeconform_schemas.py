"""Lay out the Kubernetes JSON schemas of the ``kubernetes-validate`` package (PyPI) for kubeconform, offline.

``python3 deploy/helm/kubeconform_schemas.py OUT 1.25.0 1.37.0`` writes ``OUT/v<version>-local`` and
``OUT/v<version>-local-strict`` (kubeconform's ``{{ .StrictSuffix }}`` picks the strict ones under ``-strict``).
The package's "-local" schemas reference their shared definitions by the absolute path
``/api/_definitions.json`` under an ``https://kubernetes.io`` ``$id``, which kubeconform would fetch over the
network; here the ``$id`` goes and the reference becomes the sibling file, so validation never leaves the machine.
Schemas already laid out for the installed package's version are kept.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import sys
from pathlib import Path

__all__ = ["lay_out"]


def lay_out(out: Path, versions: list[str]) -> list[Path]:
    """The schema directories for ``versions`` under ``out`` (written when missing); exits naming a missing one."""
    package = importlib.metadata.version("kubernetes-validate")
    source = importlib.resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
    made: list[Path] = []
    for version in versions:
        for flavour in ("local", "local-strict"):
            name = f"v{version.removeprefix('v')}-{flavour}"
            src = source.joinpath(name)
            if not src.is_dir():
                sys.exit(f"kubernetes-validate {package} has no schemas for Kubernetes {version} ({name})")
            dst = out / name
            stamp = dst / ".kubernetes-validate"
            if stamp.is_file() and stamp.read_text() == package:
                made.append(dst)
                continue
            dst.mkdir(parents=True, exist_ok=True)
            for entry in src.iterdir():
                if not entry.name.endswith(".json"):
                    continue
                text = entry.read_text("utf-8").replace('"/api/_definitions.json#', '"_definitions.json#')
                doc = json.loads(text)
                doc.pop("$id", None)
                (dst / entry.name).write_text(json.dumps(doc), "utf-8")
            stamp.write_text(package)
            made.append(dst)
    return made


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: kubeconform_schemas.py OUT VERSION...")
    for path in lay_out(Path(sys.argv[1]), sys.argv[2:]):
        print(path)
