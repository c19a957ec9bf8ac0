"""Summarise ``core_embedded.py lag`` JSON lines from stdin: lag min/p50/p99/max and count."""

import json
import sys

for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    row = json.loads(line)
    lags = sorted(row.pop("lags_ms", []))
    if lags:
        row |= {
            "lag_min": lags[0],
            "p50": lags[len(lags) // 2],
            "p99": lags[int(len(lags) * 0.99)],
            "max": lags[-1],
            "n": len(lags),
        }
    print({k: v for k, v in row.items() if not isinstance(v, list) or len(v) < 5})
