"""ProjectStore: the project service's rows, read and written through SQLAlchemy."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from runtime.db import utcnow
from runtime.errors import Aborted, NotFound
from services.projects.models import ProjectDeletionRow, ProjectRow


@dataclass(frozen=True)
class Page:
    rows: list[ProjectRow]
    last: ProjectRow | None
    more: bool


class ProjectStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def insert(self, row: ProjectRow) -> ProjectRow:
        async with self.sessions.begin() as session:
            session.add(row)
        return row

    async def get(self, project_id: str, include_deleting: bool = False) -> ProjectRow:
        async with self.sessions() as session:
            row = await session.get(ProjectRow, project_id)
        if row is None or (row.state != "active" and not include_deleting):
            raise NotFound(f"Project {project_id} not found")
        return row

    async def page(self, size: int, after: tuple[datetime, str] | None) -> Page:
        """Newest first; `after` is the (created_at, id) of the last item seen."""
        query = select(ProjectRow).order_by(ProjectRow.created_at.desc(), ProjectRow.id.desc())
        if after is not None:
            created_at, last_id = after
            query = query.where(
                (ProjectRow.created_at < created_at)
                | ((ProjectRow.created_at == created_at) & (ProjectRow.id < last_id))
            )
        async with self.sessions() as session:
            rows = list((await session.scalars(query.limit(size + 1))).all())
        more = len(rows) > size
        rows = rows[:size]
        return Page(rows, rows[-1] if rows else None, more)

    async def update_fields(self, project_id: str, **fields: str) -> ProjectRow:
        async with self.sessions.begin() as session:
            row = await session.get(ProjectRow, project_id, with_for_update=True)
            if row is None or row.state != "active":
                raise NotFound(f"Project {project_id} not found")
            for name, value in fields.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
        return row

    async def replace_keyring(self, project_id: str, expected_version: int, keyring: bytes) -> None:
        """Stores a re-wrapped keyring unless another change got there first."""
        async with self.sessions.begin() as session:
            result = await session.execute(
                update(ProjectRow)
                .where(
                    ProjectRow.id == project_id,
                    ProjectRow.keyring_version == expected_version,
                    ProjectRow.state == "active",
                )
                .values(keyring=keyring, keyring_version=expected_version + 1, updated_at=utcnow())
            )
            if result.rowcount != 1:
                raise Aborted("The passphrase was changed concurrently. Try again")

    async def remove(self, project_id: str) -> None:
        async with self.sessions.begin() as session:
            await session.execute(delete(ProjectRow).where(ProjectRow.id == project_id))

    # Wrong passphrases: counted on the project, audited (as a count) at the next unlock.

    async def count_failed_attempt(self, project_id: str) -> None:
        async with self.sessions.begin() as session:
            await session.execute(
                update(ProjectRow)
                .where(ProjectRow.id == project_id)
                .values(failed_attempts=ProjectRow.failed_attempts + 1)
            )

    async def forget_failed_attempts(self, project_id: str, count: int) -> None:
        """Takes `count` audited attempts off the counter (others may have come since)."""
        async with self.sessions.begin() as session:
            await session.execute(
                update(ProjectRow)
                .where(ProjectRow.id == project_id)
                .values(failed_attempts=ProjectRow.failed_attempts - count)
            )

    # Deletions: recorded durably first, then carried out (and retried) step by step.

    async def begin_deletion(self, project_id: str) -> bool:
        """Marks the project deleting and records the deletion; False if already recorded."""
        async with self.sessions.begin() as session:
            row = await session.get(ProjectRow, project_id, with_for_update=True)
            existing = await session.get(ProjectDeletionRow, project_id)
            if existing is not None:
                return False
            if row is None:
                raise NotFound(f"Project {project_id} not found")
            row.state = "deleting"
            row.updated_at = utcnow()
            now = utcnow()
            session.add(
                ProjectDeletionRow(
                    project_id=project_id,
                    requested_at=now,
                    sealed_token=None,
                    next_attempt_at=now,
                    steps_done="",
                    attempts=0,
                )
            )
        return True

    async def deletion(self, project_id: str) -> ProjectDeletionRow | None:
        async with self.sessions() as session:
            return await session.get(ProjectDeletionRow, project_id)

    async def due_deletions(self, limit: int = 20) -> list[ProjectDeletionRow]:
        async with self.sessions() as session:
            query = (
                select(ProjectDeletionRow)
                .where(
                    ProjectDeletionRow.completed_at.is_(None),
                    ProjectDeletionRow.next_attempt_at <= utcnow(),
                )
                .order_by(ProjectDeletionRow.next_attempt_at)
                .limit(limit)
            )
            return list((await session.scalars(query)).all())

    async def record_step(self, project_id: str, step: str) -> None:
        async with self.sessions.begin() as session:
            row = await session.get(ProjectDeletionRow, project_id, with_for_update=True)
            if row is not None and step not in row.steps_done.split(","):
                row.steps_done = ",".join(s for s in (*row.steps_done.split(","), step) if s)

    async def postpone(self, project_id: str, delay: timedelta) -> None:
        async with self.sessions.begin() as session:
            row = await session.get(ProjectDeletionRow, project_id, with_for_update=True)
            if row is not None:
                row.attempts += 1
                row.next_attempt_at = utcnow() + delay

    async def finish_deletion(self, project_id: str) -> None:
        """Removes the project row (its keyring with it) and closes the deletion record."""
        async with self.sessions.begin() as session:
            await session.execute(delete(ProjectRow).where(ProjectRow.id == project_id))
            row = await session.get(ProjectDeletionRow, project_id, with_for_update=True)
            if row is not None:
                row.completed_at = utcnow()
                row.sealed_token = None


def new_project_id() -> str:
    return str(uuid.uuid4())
