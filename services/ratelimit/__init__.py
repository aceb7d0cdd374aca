"""The rate limit service: Envoy's RateLimitService v3, counting in Redis fixed windows."""
