"""Server reflection: grpcurl (the real binary) lists and describes every ContextCache
service on every service port."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
SERVICES = {
    "contextcache.v1.ProjectService",
    "contextcache.v1.IngestService",
    "contextcache.v1.QueryService",
    "contextcache.v1.CryptoService",
}


async def grpcurl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        GRPCURL,
        "-plaintext",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, out.decode()
    return out.decode()


async def test_grpcurl_lists_and_describes_every_service_on_every_port(stack):
    for name, port in stack.ports.items():
        address = f"127.0.0.1:{port}"
        listed = set((await grpcurl(address, "list")).split())
        assert SERVICES <= listed, (name, listed)
        assert "grpc.health.v1.Health" in listed
        described = await grpcurl(address, "describe", "contextcache.v1.QueryService")
        assert "rpc Query ( .contextcache.v1.QueryRequest )" in described
        method = await grpcurl(address, "describe", "contextcache.v1.ProjectService.CreateProject")
        assert "CreateProject is a method" in method
        message = await grpcurl(address, "describe", "contextcache.v1.CreateProjectRequest")
        assert "string passphrase = 3" in message
