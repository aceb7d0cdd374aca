"""`python -m services.ingest` starts the ingest service."""

from runtime.config import ServiceName
from runtime.server import run
from services.ingest.app import IngestApp

if __name__ == "__main__":
    run(ServiceName.INGEST, IngestApp)
