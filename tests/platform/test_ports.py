"""Two servers never share a port: the second one fails to start instead."""

from __future__ import annotations

import pytest

from runtime.ports import free_port
from runtime.server import ListenError, Server
from services.projects.app import ProjectsApp


def test_free_port_never_hands_out_a_port_twice():
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


async def test_a_second_server_on_a_taken_port_fails_to_start(make_settings):
    settings = make_settings()
    first = Server(ProjectsApp(settings))
    port = await first.start(host="127.0.0.1", port=free_port())
    try:
        second = Server(ProjectsApp(settings))
        with pytest.raises(ListenError, match=f"projects cannot listen on 127.0.0.1:{port}"):
            await second.start(host="127.0.0.1", port=port)
    finally:
        await first.stop(grace=0.2)
