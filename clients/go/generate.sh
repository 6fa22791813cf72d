#!/usr/bin/env bash
# Regenerates gen/ from ../../proto with protoc, protoc-gen-go and
# protoc-gen-go-grpc, and records the protos' hash for the staleness test.
#   go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
#   go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
#   apt-get install protobuf-compiler   (protoc and the well-known types)
set -euo pipefail
cd "$(dirname "$0")"
PROTO=../../proto
MODULE=github.com/gantry/gantry/clients/go
PKG=$MODULE/gen/gantry/v1
rm -rf gen && mkdir -p gen
maps=()
for f in "$PROTO"/gantry/v1/*.proto; do
    maps+=("--go_opt=Mgantry/v1/$(basename "$f")=$PKG;gantryv1" "--go-grpc_opt=Mgantry/v1/$(basename "$f")=$PKG;gantryv1")
done
protoc -I "$PROTO" \
    --go_out=. --go_opt=module=$MODULE \
    --go-grpc_out=. --go-grpc_opt=module=$MODULE \
    "${maps[@]}" \
    "$PROTO"/gantry/v1/*.proto
cat "$PROTO"/gantry/v1/*.proto | sha256sum | cut -d' ' -f1 > gen/PROTO_SHA256
echo "generated from $(cat gen/PROTO_SHA256)"
