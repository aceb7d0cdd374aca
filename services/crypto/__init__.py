"""The crypto service: keyrings, unlock tokens, content encryption and the audit log."""
