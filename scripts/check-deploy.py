#!/usr/bin/env python3
"""Offline checks of deploy/: the Kubernetes manifests against the Kubernetes API schemas
(PyPI's kubernetes-validate, strict), every kustomization's references, and the compose file
against the Compose Specification's JSON schema (the one docker-compose 1.29.2 ships) with its
referenced files. What this cannot do here: render the kustomizations (`kubectl kustomize`) or
run the compose file (no Docker engine); see docs/deploy.md.

Run by scripts/check-deploy.sh (which makes the virtual environment)."""
import glob
import json
import os
import sys
import zipfile

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S_VERSION = "1.30.0"
failures = []


def fail(message):
    failures.append(message)
    print("FAIL", message)


def check_kustomization(directory, seen):
    path = os.path.join(directory, "kustomization.yaml")
    with open(path) as f:
        kustomization = yaml.safe_load(f)
    resources = []
    for entry in kustomization.get("resources", []):
        target = os.path.normpath(os.path.join(directory, entry))
        if os.path.isdir(target):
            if not os.path.isfile(os.path.join(target, "kustomization.yaml")):
                fail(f"{path}: {entry} has no kustomization.yaml")
                continue
            resources += check_kustomization(target, seen)
        elif os.path.isfile(target):
            resources += validate_resources(target, seen)
        else:
            fail(f"{path}: resource {entry} does not exist")
    for generator in kustomization.get("configMapGenerator", []):
        for name in generator.get("files", []):
            if not os.path.isfile(os.path.join(directory, name)):
                fail(f"{path}: configMapGenerator file {name} does not exist")
    names = {(r["kind"], r["metadata"]["name"]) for r in resources}
    for patch in kustomization.get("patches", []):
        patch_path = os.path.join(directory, patch["path"])
        with open(patch_path) as f:
            body = yaml.safe_load(f)
        if (body["kind"], body["metadata"]["name"]) not in names:
            fail(f"{patch_path}: patches {body['kind']}/{body['metadata']['name']}, which no resource defines")
    return resources


def validate_resources(path, seen):
    if path in seen:
        return []
    seen.add(path)
    with open(path) as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    for document in documents:
        where = f"{os.path.relpath(path, ROOT)}: {document.get('kind')}/{document.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(document, K8S_VERSION, strict=True)
            print("ok  ", where)
        except kubernetes_validate.ValidationError as e:
            fail(f"{where}: {e.message}")
    return documents


def check_compose():
    compose_path = os.path.join(ROOT, "deploy/compose/compose.yaml")
    wheels = glob.glob(os.path.join(sys.argv[1], "docker_compose-*.whl"))
    schema = json.loads(zipfile.ZipFile(wheels[0]).read("compose/config/compose_spec.json"))
    with open(compose_path) as f:
        compose = yaml.safe_load(f)
    # `name` joined the Compose Specification after this schema was written.
    schema["properties"].setdefault("name", {"type": "string"})
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(compose))
    for error in errors:
        fail(f"compose.yaml: {list(error.path)}: {error.message}")
    if not errors:
        print("ok   deploy/compose/compose.yaml (Compose Specification schema)")
    base = os.path.dirname(compose_path)
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = os.path.normpath(os.path.join(base, build["context"]))
            if not os.path.isfile(os.path.join(context, build.get("dockerfile", "Dockerfile"))):
                fail(f"compose.yaml: {name}: no Dockerfile at {build}")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                if not os.path.exists(os.path.join(base, source)):
                    fail(f"compose.yaml: {name}: {source} does not exist")


seen = set()
for overlay in sorted(glob.glob(os.path.join(ROOT, "deploy/kubernetes/overlays/*"))):
    check_kustomization(overlay, seen)
check_kustomization(os.path.join(ROOT, "deploy/kubernetes/base"), seen)
check_compose()
if failures:
    print(f"{len(failures)} deploy check(s) failed", file=sys.stderr)
    sys.exit(1)
print("deploy/: every check passed")
