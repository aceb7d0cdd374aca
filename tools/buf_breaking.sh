#!/usr/bin/env bash
# buf breaking (FILE rules) for the public API (contextcache.v1), against the protos of BASE
# (default: the first parent of HEAD — on a clean clone origin/main is HEAD itself, so the
# previous commit is what a change must stay compatible with). buf's remote dependencies are
# unreachable, so both sides are compiled into images with protoc from the installed
# protovalidate descriptor and googleapis' .proto files, and buf compares the images.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${BASE:-$(git rev-parse HEAD^1)}
googleapis=$(.venv/bin/python -c 'import pathlib, google.api.annotations_pb2 as m; print(pathlib.Path(m.__file__).parents[2])')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git archive "$base" protos/contextcache | tar -x -C "$work"
files=$(cd "$work/protos" && ls contextcache/v1/*.proto)
.venv/bin/python -m grpc_tools.protoc --descriptor_set_in=build/protovalidate.binpb \
  -I"$work/protos" -I"$googleapis" --include_imports --include_source_info -o "$work/base.binpb" $files
.venv/bin/buf breaking build/contextcache.binpb --against "$work/base.binpb" --path contextcache/v1
echo "buf breaking: no breaking change against ${base:0:12}"
