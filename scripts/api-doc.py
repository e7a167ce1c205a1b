#!/usr/bin/env python3
"""Prints the endpoint table of docs/api.md from a broker's OpenAPI document, so the document
and the doc cannot drift apart (tests/docs.rs compares this output with the table in
docs/api.md).

    scripts/api-doc.py http://127.0.0.1:7799/api/v3/openapi.json      # or a saved file
"""

import json
import sys
import urllib.request


def load(source):
    if source.startswith("http://") or source.startswith("https://"):
        with urllib.request.urlopen(source, timeout=10) as r:
            return json.load(r)
    with open(source) as f:
        return json.load(f)


def main():
    doc = load(sys.argv[1])
    rows = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            text = (op.get("description") or op.get("summary") or "").strip()
            # The first sentence: the rest is in the OpenAPI document.
            first = text.split("\n\n")[0].replace("\n", " ")
            cut = first.find(". ")
            if cut >= 0:
                first = first[: cut + 1]
            extra = sorted(c for c in op.get("responses", {}) if c not in {"200", "400", "401", "403", "404", "409", "500", "503"})
            note = f" (also {', '.join(extra)})" if extra else ""
            rows.append((path, method.upper(), first.replace("|", "\\|") + note))
    rows.sort()
    print("| method | path (under `/api/v3`) | what |")
    print("|---|---|---|")
    for path, method, text in rows:
        print(f"| {method} | `{path}` | {text} |")


if __name__ == "__main__":
    main()
