"""The shared service runtime every ContextCache service uses.

Server bootstrap, configuration, health, errors, interceptors, telemetry, database and
client helpers live here once; a service folder holds only what is specific to it.
"""

VERSION = "0.1.0"
