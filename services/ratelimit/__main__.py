"""`python -m services.ratelimit` starts the rate limit service (port 8081)."""

from runtime.config import ServiceName
from runtime.server import run
from services.ratelimit.app import RatelimitApp

if __name__ == "__main__":
    run(ServiceName.RATELIMIT, RatelimitApp)
