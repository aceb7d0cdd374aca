"""One command's connection to the gateway, and the project it is about.

Only the gateway's public API is used: the four public services of `contextcache.v1`, over
plaintext HTTP/2 gRPC to Envoy (default 127.0.0.1:8080). A project is named by its id or
its name; with neither, the project `unlock` opened last. Content calls carry the project's
unlock token in metadata `x-unlock-token`, from CONTEXTCACHE_TOKEN or the token file.
"""

from __future__ import annotations

import os
import uuid
from functools import cached_property

import grpc

from cli.errors import CliError, ExitCode
from cli.state import LocalState, StoredToken
from contextcache.v1 import (
    crypto_pb2_grpc,
    ingest_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    query_pb2_grpc,
)

DEFAULT_ADDRESS = "127.0.0.1:8080"
TOKEN_METADATA_KEY = "x-unlock-token"
TOKEN_VARIABLE = "CONTEXTCACHE_TOKEN"
_MESSAGE_LIMIT = 64 * 1024 * 1024  # a 50 MB upload, encoded, fits
PAGE_SIZE = 100  # the largest page the API serves


def is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


class Session:
    def __init__(self, address: str, timeout: float, state: LocalState | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.state = state or LocalState()
        self.project_hint = ""  # the project named in error hints ("contextcache unlock X")

    @cached_property
    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(
            self.address,
            options=[
                ("grpc.max_send_message_length", _MESSAGE_LIMIT),
                ("grpc.max_receive_message_length", _MESSAGE_LIMIT),
                ("grpc.primary_user_agent", "contextcache-cli"),
            ],
        )

    def close(self) -> None:
        """Closes the channel, which cancels every call still running on it."""
        if "channel" in self.__dict__:
            self.channel.close()

    @cached_property
    def projects(self) -> projects_pb2_grpc.ProjectServiceStub:
        return projects_pb2_grpc.ProjectServiceStub(self.channel)

    @cached_property
    def ingest(self) -> ingest_pb2_grpc.IngestServiceStub:
        return ingest_pb2_grpc.IngestServiceStub(self.channel)

    @cached_property
    def query(self) -> query_pb2_grpc.QueryServiceStub:
        return query_pb2_grpc.QueryServiceStub(self.channel)

    @cached_property
    def crypto(self) -> crypto_pb2_grpc.CryptoServiceStub:
        return crypto_pb2_grpc.CryptoServiceStub(self.channel)

    # -- which project -----------------------------------------------------------------

    def project_id(self, reference: str | None) -> str:
        """The id of the project named by id or name; None: the one unlocked last."""
        if not reference:
            reference = self.state.current()
            if not reference:
                raise CliError(
                    "No project given and none unlocked yet.",
                    ExitCode.USAGE,
                    "Name one with --project (or CONTEXTCACHE_PROJECT), or run "
                    "`contextcache unlock PROJECT` first.",
                )
        self.project_hint = reference
        if is_uuid(reference):
            return reference.lower()
        return self.project_by_name(reference).id

    def project(self, reference: str | None) -> projects_pb2.Project:
        project_id = self.project_id(reference)
        return self.projects.GetProject(
            projects_pb2.GetProjectRequest(project_id=project_id), timeout=self.timeout
        ).project

    def project_by_name(self, name: str) -> projects_pb2.Project:
        found = [p for p in self.all_projects() if p.name == name]
        if not found:
            raise CliError(f"No project is named {name!r}.", ExitCode.NOT_FOUND)
        if len(found) > 1:
            ids = ", ".join(p.id for p in found)
            raise CliError(
                f"{len(found)} projects are named {name!r} ({ids}).",
                ExitCode.USAGE,
                "Name the project by its id.",
            )
        return found[0]

    def all_projects(self, limit: int | None = None) -> list[projects_pb2.Project]:
        projects: list[projects_pb2.Project] = []
        page_token = ""
        while limit is None or len(projects) < limit:
            page = self.projects.ListProjects(
                projects_pb2.ListProjectsRequest(page_size=PAGE_SIZE, page_token=page_token),
                timeout=self.timeout,
            )
            projects += page.projects
            page_token = page.next_page_token
            if not page_token:
                break
        return projects[:limit] if limit is not None else projects

    # -- unlock tokens -----------------------------------------------------------------

    def unlock_token(self, project_id: str) -> str:
        """CONTEXTCACHE_TOKEN if set, else the token `unlock` saved for the project."""
        if token := os.environ.get(TOKEN_VARIABLE):
            return token
        stored = self.state.token(project_id)
        name = self.project_hint or project_id
        if stored is None:
            raise CliError(
                f"Project {name} is locked: no unlock token.",
                ExitCode.LOCKED,
                f"Unlock it first: contextcache unlock {name}",
            )
        if stored.expired:
            raise CliError(
                f"The unlock token of project {name} expired at {_local(stored)}.",
                ExitCode.LOCKED,
                f"Unlock it again: contextcache unlock {name}",
            )
        return stored.token

    def metadata(self, project_id: str) -> tuple[tuple[str, str], ...]:
        return ((TOKEN_METADATA_KEY, self.unlock_token(project_id)),)


def _local(token: StoredToken) -> str:
    return token.expiry.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
