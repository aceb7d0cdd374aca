"""Domain errors of the ingestion pipeline.

Each error carries a `reason` written for the person who submitted the document: it says what
went wrong and what they can do about it. The gRPC layer maps these to status codes; it must
never have to look at the message text to decide. A reason never contains document text or
internal detail (stack traces, library messages, resolved IP addresses of private hosts).
"""

from __future__ import annotations


class IngestError(Exception):
    """A failure caused by the submitted document or URL, with a reason a user can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnsupportedContent(IngestError):
    """The content type or file type is not one the pipeline can read (PDF, plain text, HTML)."""


class UnreadableDocument(IngestError):
    """The document is of a supported type but holds no text the pipeline can use:
    corrupted or encrypted PDF, PDF without a text layer, text that is not UTF-8, empty page."""


class FetchFailed(IngestError):
    """The URL could not be fetched: upstream error status, timeout, too many redirects,
    a body over the size limit, or a redirect to a non-http(s) URL."""


class AddressNotAllowed(FetchFailed):
    """The URL (or a redirect hop) resolves to an address the fetcher must not reach:
    private, loopback, link-local, cloud metadata and similar. Never retried."""


class BodyTooLarge(FetchFailed):
    """The response body is larger than the fetch limit; reading stopped at the limit."""
