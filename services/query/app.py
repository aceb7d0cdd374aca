"""The query service as the runtime runs it."""

from __future__ import annotations

import grpc

from contextcache.v1 import query_pb2_grpc
from runtime.config import ServiceName
from runtime.protos import QUERY_SERVICE
from runtime.server import ServiceApp
from services.query.servicer import QueryServicer


class QueryApp(ServiceApp):
    name = ServiceName.QUERY
    service_names = (QUERY_SERVICE,)

    def register(self, server: grpc.aio.Server) -> None:
        query_pb2_grpc.add_QueryServiceServicer_to_server(QueryServicer(self), server)
