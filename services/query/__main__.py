"""`python -m services.query` starts the query service."""

from runtime.config import ServiceName
from runtime.server import run
from services.query.app import QueryApp

if __name__ == "__main__":
    run(ServiceName.QUERY, QueryApp)
