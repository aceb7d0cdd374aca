#!/usr/bin/env bash
# buf breaking (FILE rules) for the contextcache module, against the protos of BASE
# (default: origin/main when it exists, else the previous commit). buf's remote dependencies
# are unreachable, so both sides are compiled into images with protoc from the installed
# protovalidate descriptor, and buf compares the images.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${BASE:-$(git rev-parse -q --verify origin/main || git rev-parse HEAD~1)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git archive "$base" protos/contextcache | tar -x -C "$work"
files=$(cd "$work/protos" && ls contextcache/v1/*.proto)
.venv/bin/python -m grpc_tools.protoc --descriptor_set_in=build/protovalidate.binpb \
  -I"$work/protos" --include_imports --include_source_info -o "$work/base.binpb" $files
.venv/bin/buf breaking build/contextcache.binpb --against "$work/base.binpb" --path contextcache
echo "buf breaking: no breaking change against ${base:0:12}"
