"""ProjectService RPCs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from contextcache.v1 import projects_pb2, projects_pb2_grpc
from runtime.protos import PROJECT_SERVICE

if TYPE_CHECKING:
    from services.projects.app import ProjectsApp


class ProjectServicer(projects_pb2_grpc.ProjectServiceServicer):
    def __init__(self, app: ProjectsApp) -> None:
        self.app = app

    async def GetStatus(self, request, context):  # noqa: N802
        return projects_pb2.ProjectServiceGetStatusResponse(
            status=await self.app.readiness.service_status(PROJECT_SERVICE)
        )
