from runtime.migration_env import run
from services.projects.models import Base

run(Base.metadata)
