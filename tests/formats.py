"""The ecosystem's own validators for what `lbctl export` writes, offline: the Kubernetes API's
OpenAPI schemas (kubernetes-validate, strict: an unknown field is an error, as `kubectl apply
--validate=strict` makes it) for the oldest and the newest Kubernetes the package ships, and
the Compose Specification's JSON schema for stack files."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from kubernetes_validate import utils as k8s
from packaging.version import Version

# The Compose Specification's schema as Debian's docker-compose (installed by `make setup`)
# ships it; `docker stack deploy` then checks the file against the CLI's own schema.
COMPOSE_SCHEMA = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")


def k8s_versions() -> list[str]:
    """The oldest and the newest Kubernetes the installed kubernetes-validate knows."""
    versions = sorted(k8s.all_versions(), key=Version)
    return [versions[0], versions[-1]]


def validate_kubernetes(text: str) -> list[dict[str, Any]]:
    """Every document of `text`, strict, against both versions; the documents."""
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    assert docs, "no manifests"
    for doc in docs:
        for version in k8s_versions():
            try:
                k8s.validate(doc, version, strict=True)
            except k8s.ValidationError as e:  # name the document and version it failed in
                where = ".".join(map(str, e.path))
                raise AssertionError(f"{doc['kind']} {doc['metadata']['name']} is not valid "
                                     f"for Kubernetes {version}: {where}: {e.message}") from None
    return docs


@cache
def _compose_validator() -> Any:
    assert COMPOSE_SCHEMA.is_file(), f"{COMPOSE_SCHEMA} missing: `make setup` installs it"
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # It names draft 2019-09 by a URL jsonschema does not know.
    return jsonschema.Draft201909Validator(schema)


def validate_compose(text: str | dict[str, Any]) -> dict[str, Any]:
    """A compose / stack file (text or parsed) against the Compose Specification's schema;
    the document."""
    doc: dict[str, Any] = yaml.safe_load(text) if isinstance(text, str) else text
    errors = sorted(_compose_validator().iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    return doc
