#!/usr/bin/env python3
"""Regenerates src/gantry/v1 from ../../proto with grpcio-tools (which carries
its own protoc), with type stubs for the messages (protoc's pyi) and for the
service stubs (mypy-protobuf's protoc-gen-mypy_grpc, so that
`client.query.TopQueries` is typed, not Any), and records the protos' hash for
the staleness test.

    pip install grpcio-tools==1.85.1 mypy-protobuf==5.1.0 && python generate.py
"""

import hashlib
import pathlib
import shutil
import sys

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"
OUT = HERE / "src"


def proto_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted((PROTO / "gantry" / "v1").glob("*.proto")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def main() -> None:
    target = OUT / "gantry" / "v1"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    protos = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "gantry" / "v1").glob("*.proto"))
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    # The plugin is a script beside this interpreter (a venv's bin/) or on PATH.
    plugin = shutil.which("protoc-gen-mypy_grpc", path=str(pathlib.Path(sys.executable).parent)) \
        or shutil.which("protoc-gen-mypy_grpc")
    if plugin is None:
        sys.exit("protoc-gen-mypy_grpc not found: pip install mypy-protobuf==5.1.0")
    code = protoc.main(
        ["protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={OUT}", f"--pyi_out={OUT}",
         f"--grpc_python_out={OUT}", f"--plugin=protoc-gen-mypy_grpc={plugin}", f"--mypy_grpc_out={OUT}", *protos]
    )
    if code != 0:
        sys.exit(f"protoc failed ({code})")
    (target / "__init__.py").write_text('"""Generated from proto/gantry/v1 by generate.py: do not edit."""\n')
    (target / "PROTO_SHA256").write_text(proto_hash() + "\n")
    print(f"generated {len(protos)} files from {proto_hash()}")


if __name__ == "__main__":
    main()
