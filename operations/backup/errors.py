"""The one error the backup tool reports: a message an operator can act on."""

from __future__ import annotations


class BackupError(Exception):
    """Refused or failed; the message says why and what to do. Nothing was half-written."""
