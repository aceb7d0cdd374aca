"""Operator tools run beside a deployment (backup and restore), never inside a service.

Unlike `runtime`, which every service imports, these tools may know each service's tables
and the query service's index: they act on a stopped or running deployment from outside.
"""
