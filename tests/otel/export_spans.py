"""Exports spans to gantry with the real OpenTelemetry Python SDK over OTLP/gRPC,
or over OTLP/HTTP (protobuf, gzip) when the endpoint is a URL.

Usage: export_spans.py HOST:PORT | http://HOST:PORT/v1/traces
Prints the trace id (32 hex digits) of the trace it sent. With
OTEL_EXPORTER_OTLP_CERTIFICATE set, exports over TLS as the SDK configures it
from the environment (CA, OTEL_EXPORTER_OTLP_HEADERS for a bearer token).
"""

import os
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode


def main() -> None:
    endpoint = sys.argv[1]
    provider = TracerProvider(resource=Resource.create({"service.name": "py-shop"}))
    if endpoint.startswith(("http://", "https://")):
        from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        exporter = HttpExporter(endpoint=endpoint, compression=HttpCompression.Gzip)
    else:
        insecure = "OTEL_EXPORTER_OTLP_CERTIFICATE" not in os.environ
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=insecure, compression=Compression.Gzip)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("gantry-e2e")

    with tracer.start_as_current_span("GET /orders/{id}", kind=SpanKind.SERVER) as root:
        root.set_attribute("http.route", "/orders/{id}")
        root.set_attribute("http.status_code", 200)
        root.add_event("cache miss", {"cache.key": "order:42"})
        link = trace.Link(root.get_span_context(), {"link.reason": "follows"})
        with tracer.start_as_current_span("SELECT orders", kind=SpanKind.CLIENT, links=[link]) as db:
            db.set_attribute("db.system", "postgresql")
        trace_id = root.get_span_context().trace_id
    with tracer.start_as_current_span("POST /orders", kind=SpanKind.SERVER) as failed:
        failed.set_status(Status(StatusCode.ERROR, "out of stock"))

    if not provider.force_flush(10_000):
        sys.exit("force_flush timed out")
    provider.shutdown()
    print(format(trace_id, "032x"))


if __name__ == "__main__":
    main()
