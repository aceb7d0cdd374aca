"""IngestService RPCs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from contextcache.v1 import ingest_pb2, ingest_pb2_grpc
from runtime.protos import INGEST_SERVICE

if TYPE_CHECKING:
    from services.ingest.app import IngestApp


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, app: IngestApp) -> None:
        self.app = app

    async def GetStatus(self, request, context):
        return ingest_pb2.IngestServiceGetStatusResponse(
            status=await self.app.readiness.service_status(INGEST_SERVICE)
        )
