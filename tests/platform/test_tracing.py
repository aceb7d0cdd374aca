"""Tracing: a call that crosses services yields server and client spans under one trace;
health probes, reflection and Envoy's rate-limit decisions are not traced."""

from __future__ import annotations

from envoy_rls import ratelimit_pb2, rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from contextcache.v1 import crypto_pb2, crypto_pb2_grpc, projects_pb2
from runtime.clients import open_channel
from runtime.telemetry import tracer_provider
from services.ratelimit.app import RatelimitApp
from tests.conftest import PASSPHRASE, identity_of, running


async def test_a_call_across_services_is_one_trace(stack):
    exporter = InMemorySpanExporter()
    tracer_provider("tests", SimpleSpanProcessor(exporter))

    await stack.projects.CreateProject(
        projects_pb2.CreateProjectRequest(name="traced", passphrase=PASSPHRASE)
    )
    spans = exporter.get_finished_spans()
    root = next(
        s
        for s in spans
        if s.kind == SpanKind.SERVER and s.name.endswith("ProjectService/CreateProject")
    )
    trace_id = root.context.trace_id
    in_trace = [s for s in spans if s.context.trace_id == trace_id]
    names = {(s.kind, s.name.rsplit("/", 1)[-1]) for s in in_trace}
    assert (SpanKind.CLIENT, "CreateKeyring") in names
    assert (SpanKind.SERVER, "CreateKeyring") in names
    crypto_server = next(
        s for s in in_trace if s.kind == SpanKind.SERVER and s.name.endswith("CreateKeyring")
    )
    client = next(s for s in in_trace if s.context.span_id == crypto_server.parent.span_id)
    assert client.kind == SpanKind.CLIENT and client.parent.span_id == root.context.span_id
    for span in in_trace:  # no secrets or content in spans
        assert PASSPHRASE not in str(span.attributes)


async def test_health_probes_and_reflection_are_not_traced_other_calls_are(stack):
    exporter = InMemorySpanExporter()
    tracer_provider("tests", SimpleSpanProcessor(exporter))
    # Traced as services' channels are.
    channel = open_channel(f"127.0.0.1:{stack.ports['crypto']}", identity_of(stack.settings))
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        async for _ in reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        ):
            pass
        assert exporter.get_finished_spans() == ()
        await crypto_pb2_grpc.CryptoServiceStub(channel).GenerateSalt(
            crypto_pb2.GenerateSaltRequest()
        )
    finally:
        await channel.close()
    spans = {(s.kind, s.name) for s in exporter.get_finished_spans()}
    method = "/contextcache.v1.CryptoService/GenerateSalt"
    assert spans == {(SpanKind.CLIENT, method), (SpanKind.SERVER, method)}


async def test_rate_limit_decisions_are_not_traced(make_settings):
    """Envoy asks for one before every public call, without a trace of its own."""
    exporter = InMemorySpanExporter()
    tracer_provider("tests", SimpleSpanProcessor(exporter))
    settings = make_settings()
    async with running(RatelimitApp(settings)) as server:
        channel = open_channel(f"127.0.0.1:{server.port}", identity_of(settings, "envoy"))
        try:
            entry = ratelimit_pb2.RateLimitDescriptor.Entry
            response = await rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(
                rls_pb2.RateLimitRequest(
                    domain="contextcache",
                    descriptors=[
                        ratelimit_pb2.RateLimitDescriptor(
                            entries=[
                                entry(key="window", value="minute"),
                                entry(key="remote_address", value="192.0.2.7"),
                            ]
                        )
                    ],
                )
            )
        finally:
            await channel.close()
    assert response.overall_code == rls_pb2.RateLimitResponse.OK
    assert response.statuses[0].limit_remaining == 59  # counted: one of 60 a minute
    assert exporter.get_finished_spans() == ()
