"""`python -m cli` runs the `contextcache` command (the same entry point as the installed one)."""

from cli.main import main

main()
