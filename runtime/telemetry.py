"""Tracing (OpenTelemetry) and error reporting (Sentry), both no-ops when unconfigured.

Spans carry RPC names, codes and ids; never content, passphrases or tokens. Sentry events
are scrubbed: no local variables, no request bodies, no metadata values.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from runtime import VERSION
from runtime.config import Settings
from runtime.health import Dependency

log = logging.getLogger(__name__)

_provider: TracerProvider | None = None
# Health probes and reflection are not traced: they are noise. Nor are Envoy's rate-limit
# decisions: Envoy asks for one before every public call and starts no trace for it, so each
# would be a root span of its own, made on the path of every request.
UNTRACED_METHODS = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    "/envoy.service.ratelimit.v3.RateLimitService/",
)
SECRET_NAMES = re.compile(r"pass|token|secret|key|content|plaintext|body|text|auth", re.I)


def tracer_provider(service: str, extra_processor: SpanProcessor | None = None) -> TracerProvider:
    """The process's tracer provider, created once (tests add an in-memory processor)."""
    global _provider
    if _provider is None:
        _provider = TracerProvider(
            resource=Resource.create({"service.name": f"contextcache-{service}"})
        )
        trace.set_tracer_provider(_provider)
    if extra_processor is not None:
        _provider.add_span_processor(extra_processor)
    return _provider


def traced(details: Any) -> bool:
    """The instrumentation's filter, for server (HandlerCallDetails) and client
    (ClientCallDetails) calls alike: all but health probes and reflection.

    One string test on the method. The library's own filters (`filters.negate`, `any_of`,
    `service_prefix`) cost a few runtime protocol checks and a path split on every call,
    about 0.1 ms on each side of each RPC here.
    """
    method = details.method
    if isinstance(method, bytes):  # grpc.aio gives clients bytes (grpc/grpc#31092)
        method = method.decode()
    return not method.startswith(UNTRACED_METHODS)


def configure_tracing(settings: Settings, service: str) -> None:
    provider = tracer_provider(service)
    if settings.otel_exporter_otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter,
        )

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otel_exporter_otlp_endpoint))
        )
        log.info("OTLP trace export enabled")


def _scrub(event: dict[str, Any], _hint: dict[str, Any]) -> dict[str, Any]:
    event.pop("request", None)
    event.pop("extra", None)
    for crumb in (event.get("breadcrumbs") or {}).get("values", []):
        crumb.pop("data", None)
    for key in list((event.get("contexts") or {}).keys()):
        if SECRET_NAMES.search(key):
            event["contexts"].pop(key)
    for exception in (event.get("exception") or {}).get("values", []):
        for frame in (exception.get("stacktrace") or {}).get("frames", []):
            frame.pop("vars", None)
    return event


def configure_sentry(settings: Settings, service: str) -> bool:
    if not settings.sentry_dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.grpc import GRPCIntegration

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.environment,
        release=f"contextcache@{VERSION}",
        traces_sample_rate=settings.sentry_traces_sample_rate,
        include_local_variables=False,
        max_request_body_size="never",
        before_send=_scrub,
        integrations=[GRPCIntegration()],
        server_name=f"contextcache-{service}",
    )
    sentry_sdk.set_tag("service", service)
    return True


def monitoring_dependency() -> Dependency:
    """Error reporting as a detailed-status check ("monitoring", type "sentry"): disabled
    unless Sentry was configured in this process; never required for readiness (a service
    works without its error reports)."""
    import sentry_sdk

    if not sentry_sdk.get_client().is_active():
        return Dependency.disabled("monitoring", "sentry")

    async def reporting() -> None:
        if not sentry_sdk.get_client().is_active():
            raise RuntimeError("the Sentry client is closed")

    return Dependency("monitoring", "sentry", reporting, required=False)


def report_exception(error: BaseException, reference: str) -> None:
    """Sends an unexpected error to Sentry (when configured) tagged with its reference id."""
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        scope.set_tag("reference", reference)
        sentry_sdk.capture_exception(error)
