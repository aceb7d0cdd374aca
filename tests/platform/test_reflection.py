"""Server reflection: grpcurl (the real binary), with a workload certificate, lists and
describes every public ContextCache service on every service port; the internal API is not
advertised, and is reachable with its .proto files and a certificate the caller table
allows (as examples/README.md shows)."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from runtime.config import REPO_ROOT
from tests.conftest import identity_of

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
SERVICES = {
    "contextcache.v1.ProjectService",
    "contextcache.v1.IngestService",
    "contextcache.v1.QueryService",
    "contextcache.v1.CryptoService",
}


async def run_grpcurl(settings, identity: str | None, *args: str) -> tuple[int, str]:
    tls = []
    if identity is not None:
        paths = identity_of(settings, identity).paths(settings.tls_root)
        tls = ["-cacert", str(paths["ca"]), "-cert", str(paths["cert"]), "-key", str(paths["key"])]
    process = await asyncio.create_subprocess_exec(
        GRPCURL,
        *tls,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, out.decode()


async def grpcurl(settings, *args: str, identity: str = "operator") -> str:
    code, out = await run_grpcurl(settings, identity, *args)
    assert code == 0, out
    return out


async def test_grpcurl_lists_and_describes_every_service_on_every_port(stack):
    settings = stack.settings
    for name, port in stack.ports.items():
        address = f"127.0.0.1:{port}"
        listed = set((await grpcurl(settings, address, "list")).split())
        assert SERVICES <= listed, (name, listed)
        assert "grpc.health.v1.Health" in listed
        assert not [s for s in listed if s.startswith("contextcache.internal.")], listed
        described = await grpcurl(settings, address, "describe", "contextcache.v1.QueryService")
        assert "rpc Query ( .contextcache.v1.QueryRequest )" in described
        method = await grpcurl(
            settings, address, "describe", "contextcache.v1.ProjectService.CreateProject"
        )
        assert "CreateProject is a method" in method
        message = await grpcurl(
            settings, address, "describe", "contextcache.v1.CreateProjectRequest"
        )
        assert "string passphrase = 3" in message


async def test_service_ports_refuse_callers_without_a_certificate(stack):
    address = f"127.0.0.1:{stack.ports['ingest']}"
    code, _ = await run_grpcurl(stack.settings, None, "-plaintext", address, "list")
    assert code != 0
    code, _ = await run_grpcurl(stack.settings, None, "-insecure", address, "list")
    assert code != 0


async def test_internal_rpc_with_proto_files_and_the_right_certificate(stack):
    address = f"127.0.0.1:{stack.ports['ingest']}"
    call = (
        # The descriptor set `make protos` builds (every proto, with its imports).
        "-protoset",
        str(REPO_ROOT / "build" / "contextcache.binpb"),
        "-d",
        '{"project_ids": ["4bea057f-a298-46e1-a1fe-0fa94feef92c"]}',
        address,
        "contextcache.internal.v1.IngestInternalService/GetIngestStats",
    )
    out = await grpcurl(stack.settings, *call, identity="projects")
    assert "4bea057f-a298-46e1-a1fe-0fa94feef92c" in out
    code, out = await run_grpcurl(stack.settings, "operator", *call)
    assert code != 0 and "PermissionDenied" in out, out
