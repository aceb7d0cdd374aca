"""Write buf/validate/validate.proto (and its imports) as a FileDescriptorSet.

buf's remote dependencies are unreachable from our machines, so the protovalidate
schema is taken from the installed protovalidate package, whose generated module embeds
the file descriptor. protoc reads the result with --descriptor_set_in.
Usage: python tools/protovalidate_descriptor.py OUT.binpb
"""

from __future__ import annotations

import sys
from pathlib import Path

from google.protobuf import descriptor_pb2
from protovalidate._gen.buf.validate import validate_pb


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    files = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(desc_file) -> None:  # dependencies first, as protoc expects
        for dependency in desc_file.dependencies:
            add(dependency)
        if desc_file.name not in seen:
            seen.add(desc_file.name)
            files.file.add().ParseFromString(desc_file.proto.to_binary())

    add(validate_pb.desc())
    return files


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(descriptor_set().SerializeToString())
