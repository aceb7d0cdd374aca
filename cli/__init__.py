"""The `contextcache` command line: projects, unlock, ingest, documents, query and audit
from a terminal or a script.

It talks only to the public API (`contextcache.v1`) through the Envoy gateway, like any other
client; it never imports a service's or the shared runtime's code and never reaches a service
port directly. It never prints or logs a passphrase, and keeps unlock tokens only in files
readable by their owner.
"""
