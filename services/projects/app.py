"""The project service as the runtime runs it: storage, clients, servicer wiring."""

from __future__ import annotations

import grpc

from contextcache.v1 import projects_pb2_grpc
from runtime.config import ServiceName, Settings
from runtime.protos import PROJECT_SERVICE
from runtime.server import ServiceApp
from services.projects.servicer import ProjectServicer


class ProjectsApp(ServiceApp):
    name = ServiceName.PROJECTS
    service_names = (PROJECT_SERVICE,)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)

    def register(self, server: grpc.aio.Server) -> None:
        projects_pb2_grpc.add_ProjectServiceServicer_to_server(ProjectServicer(self), server)
