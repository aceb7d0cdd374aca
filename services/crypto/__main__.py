"""`python -m services.crypto` starts the crypto service (port 50054 unless PORT is set)."""

from runtime.config import ServiceName
from runtime.server import run
from services.crypto.app import CryptoApp

if __name__ == "__main__":
    run(ServiceName.CRYPTO, CryptoApp)
