from runtime.migration_env import run
from services.ingest.models import Base

run(Base.metadata)
