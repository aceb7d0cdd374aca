"""QueryService RPCs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from contextcache.v1 import query_pb2, query_pb2_grpc
from runtime.protos import QUERY_SERVICE

if TYPE_CHECKING:
    from services.query.app import QueryApp


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    def __init__(self, app: QueryApp) -> None:
        self.app = app

    async def GetStatus(self, request, context):
        return query_pb2.QueryServiceGetStatusResponse(
            status=await self.app.readiness.service_status(QUERY_SERVICE)
        )
