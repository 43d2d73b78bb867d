#!/usr/bin/env python3
"""A small OTLP receiver for the tests, built only on PyPI's official bindings
(opentelemetry-proto) and grpcio: what it receives is decoded by code nobody here wrote.

Listens for OTLP/gRPC (TraceService, LogsService, MetricsService) and OTLP/HTTP protobuf
(POST /v1/traces, /v1/logs, /v1/metrics) and appends every request to a file as one JSON
line: {"signal": "traces"|"logs"|"metrics", "transport": "grpc"|"http", "request": ...}, the
request as protobuf's JSON mapping with the proto field names, normalized for the tests:
trace and span ids as hex, 64-bit integers (times, counts, int values) as JSON numbers.

    otlp_sink.py --grpc 127.0.0.1:4317 --http 127.0.0.1:4318 --out received.jsonl
"""

import argparse
import base64
import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as metrics_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc

REQUESTS = {
    "traces": (trace_pb.ExportTraceServiceRequest, trace_pb.ExportTraceServiceResponse),
    "logs": (logs_pb.ExportLogsServiceRequest, logs_pb.ExportLogsServiceResponse),
    "metrics": (metrics_pb.ExportMetricsServiceRequest, metrics_pb.ExportMetricsServiceResponse),
}

IDS = {"trace_id", "span_id", "parent_span_id"}
INTEGERS = {"int_value", "as_int", "count", "bucket_counts"}


def normalize(value, key=None):
    if isinstance(value, dict):
        return {k: normalize(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v, key) for v in value]
    if key in IDS and isinstance(value, str):
        return base64.b64decode(value).hex()
    if isinstance(value, str) and (key in INTEGERS or (key or "").endswith("_unix_nano")):
        return int(value)
    return value


class Sink:
    def __init__(self, path):
        self.out = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def record(self, signal, transport, request):
        line = json.dumps(
            {
                "signal": signal,
                "transport": transport,
                "request": normalize(MessageToDict(request, preserving_proto_field_name=True)),
            },
            separators=(",", ":"),
        )
        with self.lock:
            self.out.write(line + "\n")


def grpc_servicer(base, signal, sink):
    response = REQUESTS[signal][1]

    class Servicer(base):
        def Export(self, request, context):
            sink.record(signal, "grpc", request)
            return response()

    return Servicer()


def http_handler(sink):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            signal = {"/v1/traces": "traces", "/v1/logs": "logs", "/v1/metrics": "metrics"}.get(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if signal is None:
                return self.reply(404, b"")
            if self.headers.get("Content-Type") != "application/x-protobuf":
                return self.reply(415, b"")
            request_type, response_type = REQUESTS[signal]
            request = request_type()
            request.ParseFromString(body)
            sink.record(signal, "http", request)
            self.reply(200, response_type().SerializeToString())

        def reply(self, code, payload):
            self.send_response(code)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--http", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    sink = Sink(args.out)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_grpc.add_TraceServiceServicer_to_server(grpc_servicer(trace_grpc.TraceServiceServicer, "traces", sink), server)
    logs_grpc.add_LogsServiceServicer_to_server(grpc_servicer(logs_grpc.LogsServiceServicer, "logs", sink), server)
    metrics_grpc.add_MetricsServiceServicer_to_server(
        grpc_servicer(metrics_grpc.MetricsServiceServicer, "metrics", sink), server
    )
    server.add_insecure_port(args.grpc)
    server.start()

    host, port = args.http.rsplit(":", 1)
    httpd = ThreadingHTTPServer((host, int(port)), http_handler(sink))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print(f"otlp_sink: grpc {args.grpc} http {args.http} -> {args.out}", file=sys.stderr, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
