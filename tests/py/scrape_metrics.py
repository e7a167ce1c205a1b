#!/usr/bin/env python3
"""Reads a moonraft /metrics page with Prometheus's own parser (prometheus_client's OpenMetrics
parser) and prints its samples as JSON lines: {"name", "labels", "value"}.

Exits non-zero if the page does not parse or a histogram is not sane: buckets cumulative
(never decreasing as `le` grows), a +Inf bucket equal to _count, and a sum that is not negative.

    scrape_metrics.py http://127.0.0.1:9121/metrics
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
        ctype = r.headers.get("Content-Type", "")
        text = r.read().decode()
    if not ctype.startswith("application/openmetrics-text"):
        sys.exit(f"unexpected Content-Type {ctype!r}")
    for family in text_string_to_metric_families(text):
        if family.type == "histogram":
            series = {}
            for s in family.samples:
                key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                series.setdefault(key, {"buckets": [], "count": None, "sum": None})
                if s.name.endswith("_bucket"):
                    series[key]["buckets"].append((float(s.labels["le"]), s.value))
                elif s.name.endswith("_count"):
                    series[key]["count"] = s.value
                elif s.name.endswith("_sum"):
                    series[key]["sum"] = s.value
            for key, h in series.items():
                b = sorted(h["buckets"])
                if not b or b[-1][0] != float("inf"):
                    sys.exit(f"{family.name}{key}: no +Inf bucket")
                if any(b[i][1] > b[i + 1][1] for i in range(len(b) - 1)):
                    sys.exit(f"{family.name}{key}: buckets not cumulative: {b}")
                if b[-1][1] != h["count"]:
                    sys.exit(f"{family.name}{key}: +Inf bucket {b[-1][1]} != count {h['count']}")
                if h["sum"] is None or h["sum"] < 0:
                    sys.exit(f"{family.name}{key}: bad sum {h['sum']}")
        for s in family.samples:
            print(json.dumps({"name": s.name, "labels": s.labels, "value": s.value}))


if __name__ == "__main__":
    main()
