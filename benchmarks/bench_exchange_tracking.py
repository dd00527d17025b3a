"""Benchmark: ingest a generated Exchange message tracking log (MSGTRK) and compare with
pyarrow's raw CSV read of the same file (every column as a string), in the same run.

    .venv/bin/python benchmarks/bench_exchange_tracking.py --size-mb 250
    .venv/bin/python benchmarks/bench_exchange_tracking.py            # 1000 MB
    .venv/bin/python benchmarks/bench_exchange_tracking.py --size-mb 250 --file /tmp/m250.LOG

`--file` keeps the generated log at that path (and reuses it when it exists with the size asked
for), so before/after runs measure the same bytes.

Each measurement runs in its own subprocess so its peak RSS is its own (ru_maxrss). The two
measurements alternate `--repeat` times (default 3) and the fastest run of each is compared: the
machine is shared, and a single pair of runs swings by 1.5x either way.
Target (issue 3): ingest >= 0.5 x the raw string read; peak RSS < 1 GB and flat with size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.ingest.exchange_tracking import FIELDS_2013

HEADER = (
    "#Software: Microsoft Exchange Server\r\n#Version: 15.02.1544.004\r\n"
    "#Log-type: Message Tracking Log\r\n#Date: 2026-11-02T00:00:00.000Z\r\n"
    "#Fields: " + ",".join(FIELDS_2013) + "\r\n"
)
# One message = RECEIVE from an application + SENDEXTERNAL to Exchange Online (+ a NOTIFYMAPI).
RECEIVE = (
    "{ts},10.0.5.{c},erp{c}.corp.local,10.0.0.10,exch01,08DE1A2B{sid:08X};{ts};0,"
    "exch01\\Application relay,SMTP,RECEIVE,{imid},<{imid}.job@erp{c}.corp.local>,"
    "{nid:08x}-3f4a-4d6b-a1c2-08de1f9a0c11,user{r}@fabrikam.com;ops{r}@contoso.com,,{size},2,,,"
    "\"Invoice {imid}, batch run\",erp-alerts@contoso.com,app{c}@erp.corp.local,0cA:,Originating,,"
    "10.0.5.{c},10.0.0.10,S:FromEntity=Internet;S:DeliveryPriority=Normal,Email,"
    "{nid:08x}-c5b9-46fe-1234-56dc1db88f8f,15.02.1544.004\r\n"
)
SEND = (
    "{ts},10.0.0.10,exch01,52.101.194.18,contoso-com.mail.protection.outlook.com,"
    "\";250 2.6.0 <{imid}.job@erp{c}.corp.local> [InternalId={imid}, Hostname=DM6PR12MB4410."
    "namprd12.prod.outlook.com] {size} bytes in 0.172, 146.6 KB/sec Queued mail for delivery;"
    "ClientSubmitTime:\",Outbound to Office 365 - 6f1d2c4e-8a1b-4c3d-9e2f-0a1b2c3d4e5f,SMTP,"
    "SENDEXTERNAL,{imid},<{imid}.job@erp{c}.corp.local>,{nid:08x}-3f4a-4d6b-a1c2-08de1f9a0c11,"
    "user{r}@fabrikam.com;ops{r}@contoso.com,250 2.1.5 Recipient OK;250 2.1.5 Recipient OK,"
    "{size},2,,,\"Invoice {imid}, batch run\",erp-alerts@contoso.com,app{c}@erp.corp.local,"
    "{ts};SRV=exch01.contoso.com:TOTAL-HUB=1.694|SMR=0.112|CAT=0.061|QDE=1.342|SMS=0.179,"
    "Originating,,,,S:E2ELatency=1.694;S:ToEntity=Internet;S:DeliveryPriority=Normal,Email,"
    "{nid:08x}-e10c-4111-19bf-08dc0f111bee,15.02.1544.004\r\n"
)


def generate(path: Path, size_mb: int) -> None:
    target = size_mb * 1024 * 1024
    t0 = 1793577600  # 2026-11-02T00:00:00Z; a message every 50 ms of log time
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("\ufeff" + HEADER)
        written, i = 0, 0
        while written < target:
            buf = []
            for _ in range(5000):
                sec, ms = divmod(i * 50, 1000)
                ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t0 + sec)) + f".{ms:03d}Z"
                kw = {"ts": ts, "c": i % 200, "sid": i, "imid": 10_000_000 + i,
                      "nid": i, "r": i % 997, "size": 2000 + i % 50000}
                buf.append(RECEIVE.format(**kw))
                buf.append(SEND.format(**kw))
                i += 1
            chunk = "".join(buf)
            fh.write(chunk)
            written += len(chunk)


def measure_ingest(path: str) -> dict:
    import pyarrow as pa  # noqa: F401

    from pipeline.ingest import exchange_tracking
    from pipeline.ingest.base import IngestContext, Source

    ctx = IngestContext()
    start = time.perf_counter()
    rows = sum(b.num_rows for b in exchange_tracking.read([Source(Path(path))], ctx))
    secs = time.perf_counter() - start
    return {"seconds": secs, "messages": rows,
            "lines": ctx.accounting.totals()["lines"],
            "rejected": ctx.accounting.totals()["rejected_lines"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure_raw(path: str) -> dict:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    start = time.perf_counter()
    t = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(skip_rows=5, column_names=FIELDS_2013),
        convert_options=pacsv.ConvertOptions(column_types={f: pa.string() for f in FIELDS_2013}),
    )
    secs = time.perf_counter() - start
    return {"seconds": secs, "rows": t.num_rows,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(kind: str, path: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, path],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1000)
    ap.add_argument("--file", type=Path, help="keep (or reuse) the generated log at this path")
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs of each measurement")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, path = args.child
        print(json.dumps(measure_ingest(path) if kind == "ingest" else measure_raw(path)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file or Path(tmp) / "MSGTRK2026110200-1.LOG"
        if not path.exists() or os.path.getsize(path) < args.size_mb * 1024 * 1024:
            generate(path, args.size_mb)
        mb = os.path.getsize(path) / 1e6
        raws, ings = [], []
        for _ in range(max(1, args.repeat)):
            raws.append(_child("raw", str(path)))
            ings.append(_child("ingest", str(path)))
    raw = min(raws, key=lambda r: r["seconds"])
    ing = min(ings, key=lambda r: r["seconds"])
    res = {
        "file_mb": round(mb, 1),
        "ingest_mb_s": round(mb / ing["seconds"], 1),
        "raw_read_csv_mb_s": round(mb / raw["seconds"], 1),
        "ratio_to_raw": round(raw["seconds"] / ing["seconds"], 3),
        "ratio_per_pair": [round(r["seconds"] / i["seconds"], 3) for r, i in zip(raws, ings,
                                                                              strict=True)],
        "ingest_peak_rss_mb": round(max(i["peak_rss_mb"] for i in ings)),
        "raw_peak_rss_mb": round(max(r["peak_rss_mb"] for r in raws)),
        "messages": ing["messages"], "lines": ing["lines"], "rejected": ing["rejected"],
    }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
