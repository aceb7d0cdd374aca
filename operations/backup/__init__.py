"""Backup and restore of a ContextCache deployment: `python -m operations.backup`.

A backup holds every service's tables (SQLite files, or one `pg_dump` of the services'
tables) and a manifest; the vector index is never copied but rebuilt at restore from
ingest's chunks (vectors and ciphertext), so it always matches the restored tables and no
passphrase or model is needed. Secrets (the token sealing key, TLS material) are never
written into a backup. docs/operations.md is the operator's guide.
"""
