"""The shared service runtime every ContextCache service uses.

Server bootstrap, configuration, health, errors, interceptors, telemetry, database and
client helpers live here once; a service folder holds only what is specific to it.
"""

import os

VERSION = "0.1.0"

# Several ContextCache processes share a few cores. OpenMP threads that busy-wait after each
# parallel region (the default) starve the other processes: a 15 ms query embedding took
# 450 ms while another service had just embedded. Set before torch is imported anywhere.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
