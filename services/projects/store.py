"""ProjectStore: the project service's rows, read and written through SQLAlchemy.

Every change that is audited records its event in the same transaction (runtime/outbox.py),
so a change is never kept without its event, nor an event without its change.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from contextcache.v1 import crypto_pb2
from runtime.db import utcnow
from runtime.errors import Aborted, AlreadyExists, NotFound
from runtime.outbox import AuditEvent, AuditOutbox
from services.projects.models import AUDIT_OUTBOX, ProjectDeletionRow, ProjectRow, ProjectState

ACTOR = "token-holder"


@dataclass(frozen=True)
class Page:
    rows: list[ProjectRow]
    last: ProjectRow | None
    more: bool


class ProjectStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.outbox = AuditOutbox(AUDIT_OUTBOX)

    async def _record(self, session: AsyncSession, event: AuditEvent) -> None:
        await self.outbox.record(await session.connection(), event)

    async def insert(self, row: ProjectRow) -> ProjectRow:
        """Stores a new project (with its audit grant) and its creation event."""
        assert row.audit_grant is not None
        async with self.sessions.begin() as session:
            session.add(row)
            await session.flush()
            await self._record(
                session,
                AuditEvent(
                    row.id, crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_CREATED, ACTOR, row.audit_grant
                ),
            )
        return row

    async def get(self, project_id: str, include_deleting: bool = False) -> ProjectRow:
        async with self.sessions() as session:
            row = await session.get(ProjectRow, project_id)
        visible = (
            {ProjectState.ACTIVE, ProjectState.DELETING}
            if include_deleting
            else {ProjectState.ACTIVE}
        )
        if row is None or row.state not in visible:
            raise NotFound(f"Project {project_id} not found")
        return row

    async def exists(self, project_id: str) -> bool:
        """Whether any row holds the id, in whatever state (importing included)."""
        async with self.sessions() as session:
            return await session.get(ProjectRow, project_id) is not None

    async def page(self, size: int, after: tuple[datetime, str] | None) -> Page:
        """Newest first; `after` is the (created_at, id) of the last item seen."""
        query = (
            select(ProjectRow)
            .where(ProjectRow.state != ProjectState.IMPORTING)
            .order_by(ProjectRow.created_at.desc(), ProjectRow.id.desc())
        )
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

    async def update_fields(
        self, project_id: str, audit_grant: bytes | None, **fields: str
    ) -> ProjectRow:
        """Updates the fields, with the PROJECT_UPDATED event signed under `audit_grant` (or
        the grant of the project's latest unlock)."""
        async with self.sessions.begin() as session:
            row = await session.get(ProjectRow, project_id, with_for_update=True)
            if row is None or row.state != ProjectState.ACTIVE:
                raise NotFound(f"Project {project_id} not found")
            for name, value in fields.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            await self._record(
                session,
                AuditEvent(
                    project_id,
                    crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_UPDATED,
                    ACTOR,
                    _grant(row, audit_grant),
                    {"fields": ",".join(sorted(fields))},
                ),
            )
        return row

    async def record_unlock(self, project_id: str, audit_grant: bytes, event_type: int) -> None:
        """After a keyring was opened (an unlock or a passphrase change, `event_type`): keeps
        the new audit grant and records the wrong passphrases since the last unlock (one
        event, a count, never a guess) and the event, in one transaction."""
        async with self.sessions.begin() as session:
            row = await session.get(ProjectRow, project_id, with_for_update=True)
            if row is None:
                raise NotFound(f"Project {project_id} not found")
            row.audit_grant = audit_grant
            if row.failed_attempts:
                await self._record(
                    session,
                    AuditEvent(
                        project_id,
                        crypto_pb2.AUDIT_EVENT_TYPE_UNLOCK_FAILED,
                        ACTOR,
                        audit_grant,
                        {"count": str(row.failed_attempts)},
                    ),
                )
                row.failed_attempts = 0
            await self._record(session, AuditEvent(project_id, event_type, ACTOR, audit_grant))

    async def replace_keyring(self, project_id: str, expected_version: int, keyring: bytes) -> None:
        """Stores a re-wrapped keyring unless another change got there first."""
        async with self.sessions.begin() as session:
            result = await session.execute(
                update(ProjectRow)
                .where(
                    ProjectRow.id == project_id,
                    ProjectRow.keyring_version == expected_version,
                    ProjectRow.state == ProjectState.ACTIVE,
                )
                .values(keyring=keyring, keyring_version=expected_version + 1, updated_at=utcnow())
            )
            if result.rowcount != 1:
                raise Aborted("The passphrase was changed concurrently. Try again")

    # Exports and imports (services/projects/transfer.py).

    async def record_export(self, project_id: str, audit_grant: bytes | None) -> None:
        """Records the PROJECT_EXPORTED event (signed under `audit_grant`, or the grant of
        the project's latest unlock)."""
        async with self.sessions.begin() as session:
            row = await session.get(ProjectRow, project_id)
            if row is None or row.state != ProjectState.ACTIVE:
                raise NotFound(f"Project {project_id} not found")
            await self._record(
                session,
                AuditEvent(
                    project_id,
                    crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_EXPORTED,
                    ACTOR,
                    _grant(row, audit_grant),
                ),
            )

    async def claim_import(self, row: ProjectRow) -> None:
        """Stores `row` in state importing: the id is this import's, or ALREADY_EXISTS."""
        row.state = ProjectState.IMPORTING
        try:
            async with self.sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            raise AlreadyExists(f"Project {row.id} exists in this deployment") from None

    async def finish_import(
        self, project_id: str, audit_grant: bytes, attributes: dict[str, str]
    ) -> ProjectRow:
        """Makes the imported project visible, with its PROJECT_IMPORTED event."""
        async with self.sessions.begin() as session:
            row = await session.get(ProjectRow, project_id, with_for_update=True)
            if row is None or row.state != ProjectState.IMPORTING:
                raise Aborted(f"The import of project {project_id} was interrupted. Try again")
            row.state = ProjectState.ACTIVE
            row.audit_grant = audit_grant
            row.updated_at = utcnow()
            await self._record(
                session,
                AuditEvent(
                    project_id,
                    crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_IMPORTED,
                    ACTOR,
                    audit_grant,
                    attributes,
                ),
            )
        return row

    async def abandon_import(self, project_id: str) -> None:
        async with self.sessions.begin() as session:
            await session.execute(
                delete(ProjectRow).where(
                    ProjectRow.id == project_id, ProjectRow.state == ProjectState.IMPORTING
                )
            )

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

    # Deletions: recorded durably first, then carried out (and retried) step by step.

    async def begin_deletion(self, project_id: str, audit_grant: bytes | None) -> bool:
        """Marks the project deleting and records the deletion with its PROJECT_DELETED
        event (signed under `audit_grant`, or the grant of the project's latest unlock);
        False if already recorded."""
        async with self.sessions.begin() as session:
            row = await session.get(ProjectRow, project_id, with_for_update=True)
            existing = await session.get(ProjectDeletionRow, project_id)
            if existing is not None:
                return False
            if row is None:
                raise NotFound(f"Project {project_id} not found")
            row.state = ProjectState.DELETING
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
            await self._record(
                session,
                AuditEvent(
                    project_id,
                    crypto_pb2.AUDIT_EVENT_TYPE_PROJECT_DELETED,
                    ACTOR,
                    _grant(row, audit_grant),
                ),
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


def _grant(row: ProjectRow, given: bytes | None) -> bytes:
    grant = given or row.audit_grant
    if grant is None:  # the servicer asks crypto for one when the project has none
        raise ValueError(f"project {row.id} has no audit grant")
    return grant


def new_project_id() -> str:
    return str(uuid.uuid4())
