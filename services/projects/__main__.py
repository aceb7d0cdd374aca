"""`python -m services.projects` starts the project service."""

from runtime.config import ServiceName
from runtime.server import run
from services.projects.app import ProjectsApp

if __name__ == "__main__":
    run(ServiceName.PROJECTS, ProjectsApp)
