"""JobTokens: one job token per project and unlock token, reused for a bounded time."""

from __future__ import annotations

from services.ingest.servicer import JobTokens


class Issuer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, project_id: str, unlock_token: str) -> str:
        self.calls.append((project_id, unlock_token))
        return f"job-{len(self.calls)}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_job_token_is_reused_for_the_same_unlock_token_until_the_window_ends():
    issue, clock = Issuer(), Clock()
    tokens = JobTokens(issue, reuse_for=60, clock=clock)
    assert await tokens.get("p", "unlock-a") == "job-1"
    clock.now += 59
    assert await tokens.get("p", "unlock-a") == "job-1"
    clock.now += 1
    assert await tokens.get("p", "unlock-a") == "job-2"  # a fresh one, with its full lifetime
    assert len(issue.calls) == 2


async def test_each_project_and_unlock_token_gets_its_own_job_token():
    issue = Issuer()
    tokens = JobTokens(issue, clock=Clock())
    assert await tokens.get("p", "unlock-a") == "job-1"
    assert await tokens.get("p", "unlock-b") == "job-2"
    assert await tokens.get("q", "unlock-a") == "job-3"
    assert await tokens.get("p", "unlock-b") == "job-2"
    assert issue.calls == [("p", "unlock-a"), ("p", "unlock-b"), ("q", "unlock-a")]


async def test_the_least_recently_used_are_forgotten_beyond_the_size_and_no_token_is_kept():
    issue = Issuer()
    tokens = JobTokens(issue, size=2, clock=Clock())
    for name in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" comes
        await tokens.get("p", f"unlock-{name}")
    assert await tokens.get("p", "unlock-a") == "job-1"
    assert await tokens.get("p", "unlock-b") == "job-4"  # issued again
    assert "unlock-" not in repr(tokens._issued)  # only digests of unlock tokens
