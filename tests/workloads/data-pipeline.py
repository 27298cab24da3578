#!/usr/bin/python3
"""A data-pipeline job, as deploy/policies/data-pipeline.toml expects one: installed in
/opt/pipeline/bin, it reads the raw extracts /data/raw/*.csv (never /data/raw/restricted),
writes cleaned copies to /data/staging, publishes a summary table to /data/out and loads it
into the warehouse.

Run inside a run under that policy, with the paths rewritten by the test (tests/tests/
workloads.rs): DATA_DIR for /data; WAREHOUSE the warehouse's host:port (loopback; a line
protocol: one "LOAD table rows" line, answered "OK rows"). Deterministic; exits non-zero at
the first failure.
"""
import csv
import glob
import os
import socket
import sys
import tempfile

data = os.environ["DATA_DIR"]
raw, staging, out = (os.path.join(data, d) for d in ("raw", "staging", "out"))

totals = {}
for path in sorted(glob.glob(os.path.join(raw, "*.csv"))):
    name = os.path.basename(path)
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["amount"].strip()]
    # Stage a cleaned copy (written to a temporary file, then renamed into place).
    fd, tmp = tempfile.mkstemp(dir=staging, suffix=".tmp")
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["region", "amount"])
        w.writeheader()
        for r in rows:
            w.writerow({"region": r["region"].strip().lower(), "amount": int(r["amount"])})
    os.replace(tmp, os.path.join(staging, name))
    for r in rows:
        region = r["region"].strip().lower()
        totals[region] = totals.get(region, 0) + int(r["amount"])

summary = os.path.join(out, "summary.csv")
with open(summary, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["region", "total"])
    for region in sorted(totals):
        w.writerow([region, totals[region]])

host, port = os.environ["WAREHOUSE"].rsplit(":", 1)
with socket.create_connection((host, int(port)), timeout=5) as s:
    s.sendall(f"LOAD summary {len(totals)}\n".encode())
    reply = s.makefile().readline().strip()
if reply != f"OK {len(totals)}":
    sys.exit(f"warehouse said {reply!r}")
print(f"published {len(totals)} regions")
