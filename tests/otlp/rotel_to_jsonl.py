#!/usr/bin/env python3
"""Turns rotel's debug log (`rotel-agent start --debug-log traces --debug-log logs
--debug-log metrics --debug-log-verbosity detailed`: the OpenTelemetry Collector debug
exporter's "detailed" text, on rotel's stdout) into the JSON lines otlp_sink.py writes, so
that the tests read both receivers the same way. It knows what tcpobs sends: resources,
spans (ids, parent, name, kind, times, attributes, status), log records (times, severity,
event name, body, attributes, trace context) and metrics (histograms, sums, gauges).
Attribute values that are lists or maps stay as rotel prints them (a string).

    rotel_to_jsonl.py rotel.out > received.jsonl
"""

import json
import re
import sys

ATTRIBUTE = re.compile(r"^\s*-> ([^:]+): (\w+)\((.*)\)$")
DESCRIPTOR = re.compile(r"^\s*-> (Name|Description|Unit|DataType|IsMonotonic|AggregationTemporality): ?(.*)$")


def value(kind, raw):
    if kind == "Str":
        return {"string_value": raw}
    if kind == "Int":
        return {"int_value": int(raw)}
    if kind == "Double":
        return {"double_value": float(raw)}
    if kind == "Bool":
        return {"bool_value": raw == "true"}
    return {"string_value": raw}


FIELDS = {
    "Trace ID": ("trace_id", str),
    "Parent ID": ("parent_span_id", str),
    "ID": ("span_id", str),
    "Span ID": ("span_id", str),
    "Name": ("name", str),
    "Kind": ("kind", str),
    "Start time": ("start_time_unix_nano", int),
    "End time": ("end_time_unix_nano", int),
    "Status code": ("status.code", str),
    "Status message": ("status.message", str),
    "Timestamp": ("time_unix_nano", int),
    "ObservedTimestamp": ("observed_time_unix_nano", int),
    "StartTimestamp": ("start_time_unix_nano", int),
    "SeverityText": ("severity_text", str),
    "SeverityNumber": ("severity_number", lambda s: s.split("(")[0]),
    "EventName": ("event_name", str),
    "Body": ("body", lambda s: None if s == "Empty" else {"string_value": s.split("(", 1)[-1][:-1]}),
    "Count": ("count", int),
    "Sum": ("sum", float),
    "Value": ("value", str),
}


def convert(path):
    out = []
    current = None  # what attributes go to: a resource, span, log record or data point
    request = None
    metric = None
    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("{"):
            continue  # rotel's own log, as JSON
        if line.startswith("Resource"):
            metric = None
        if line.startswith("ResourceSpans #"):
            request = {"resource_spans": [{"resource": {"attributes": []}, "scope_spans": [{"spans": []}]}]}
            out.append({"signal": "traces", "transport": "rotel", "request": request})
            current = request["resource_spans"][0]["resource"]
        elif line.startswith("ResourceLog #"):
            request = {"resource_logs": [{"resource": {"attributes": []}, "scope_logs": [{"log_records": []}]}]}
            out.append({"signal": "logs", "transport": "rotel", "request": request})
            current = request["resource_logs"][0]["resource"]
        elif line.startswith("ResourceMetrics #"):
            request = {"resource_metrics": [{"resource": {"attributes": []}, "scope_metrics": [{"metrics": []}]}]}
            out.append({"signal": "metrics", "transport": "rotel", "request": request})
            current = request["resource_metrics"][0]["resource"]
        elif line.startswith("Span #"):
            current = {"attributes": [], "status": {}}
            request["resource_spans"][0]["scope_spans"][0]["spans"].append(current)
        elif line.startswith("LogRecord #"):
            current = {"attributes": []}
            request["resource_logs"][0]["scope_logs"][0]["log_records"].append(current)
        elif line.startswith("Metric #"):
            metric, current = {}, None
            request["resource_metrics"][0]["scope_metrics"][0]["metrics"].append(metric)
        elif line.startswith(("HistogramDataPoints #", "NumberDataPoints #")):
            current = {"attributes": [], "explicit_bounds": [], "bucket_counts": []}
            metric[metric["_kind"]]["data_points"].append(current)
        elif metric is not None and current is None and DESCRIPTOR.match(line):
            key, text = DESCRIPTOR.match(line).groups()
            if key == "DataType":
                metric["_kind"] = {"Histogram": "histogram", "Sum": "sum", "Gauge": "gauge"}[text]
                metric[metric["_kind"]] = {"data_points": []}
            elif key == "AggregationTemporality":
                metric[metric["_kind"]]["aggregation_temporality"] = text
            elif key == "IsMonotonic":
                metric[metric["_kind"]]["is_monotonic"] = text == "true"
            else:
                metric[key.lower()] = text
        elif line.startswith("Buckets #"):
            current["bucket_counts"].append(int(line.rsplit(":", 1)[1].strip()))
        elif ATTRIBUTE.match(line) and current is not None:
            key, kind, raw = ATTRIBUTE.match(line).groups()
            current["attributes"].append({"key": key, "value": value(kind, raw)})
        elif current is not None:
            key, _, text = line.strip().partition(":")
            key, text = key.strip(), text.strip()
            if key.startswith("ExplicitBounds #"):
                current["explicit_bounds"].append(float(text))
                continue
            field = FIELDS.get(key)
            if field is None:
                continue
            name, parse = field
            if name.startswith("status."):
                current["status"][name[7:]] = text
            elif name == "value":
                current["as_int" if re.fullmatch(r"-?\d+", text) else "as_double"] = (
                    int(text) if re.fullmatch(r"-?\d+", text) else float(text)
                )
            elif text != "" or name != "parent_span_id":
                parsed = parse(text)
                if parsed is not None:
                    current[name] = parsed
    for record in out:
        for resource in record["request"].get("resource_metrics", []):
            for metric in resource["scope_metrics"][0]["metrics"]:
                metric.pop("_kind", None)
    return out


if __name__ == "__main__":
    for record in convert(sys.argv[1]):
        print(json.dumps(record, separators=(",", ":")))
