"""The ingest service as the runtime runs it."""

from __future__ import annotations

import grpc

from contextcache.v1 import ingest_pb2_grpc
from runtime.config import ServiceName
from runtime.protos import INGEST_SERVICE
from runtime.server import ServiceApp
from services.ingest.servicer import IngestServicer


class IngestApp(ServiceApp):
    name = ServiceName.INGEST
    service_names = (INGEST_SERVICE,)

    def register(self, server: grpc.aio.Server) -> None:
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(IngestServicer(self), server)
