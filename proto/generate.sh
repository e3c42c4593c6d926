#!/usr/bin/env bash
# Regenerates gob_metrics/proto/ from proto/*.proto. Developer tool only: the generated
# modules are committed, so installing or running gob-metrics never needs protoc.
# Needs grpcio-tools (pip install grpcio-tools) whose protoc matches the protobuf runtime major.
set -euo pipefail
cd "$(dirname "$0")/.."
out=gob_metrics/proto
rm -rf "$out" && mkdir -p "$out/prometheus" "$out/gob"
python -m grpc_tools.protoc -Iproto --python_out="$out" \
  proto/prometheus/types.proto proto/prometheus/remote.proto proto/gob/ingest.proto
# protoc emits top-level imports; make them package-relative.
sed -i 's/^from prometheus import /from gob_metrics.proto.prometheus import /' "$out"/*/*_pb2.py
touch "$out/__init__.py" "$out/prometheus/__init__.py" "$out/gob/__init__.py"
