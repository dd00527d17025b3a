"""Exim mainlog ingest throughput and peak RSS, against a per-line Python regex parser.

    .venv/bin/python benchmarks/bench_exim.py --size-mb 200

Generates a realistic mainlog (arrivals, smart-host deliveries, EOP rejections, NDRs, deferrals,
connection noise), then runs each parser in its own subprocess so that peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXO = "contoso-com.mail.protection.outlook.com"


def _id(n: int) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    s = ""
    for _ in range(11):
        s = digits[n % 62] + s
        n //= 62
    return f"1vQ{s[:3]}-{s}-0001"


def generate(path: Path, size_mb: int, seed: int = 7) -> int:
    """Write about size_mb of mainlog; returns the number of messages."""
    rnd = random.Random(seed)
    senders = ["alerts@contoso.com", "noreply@erp.corp.local", "<>",
               "bounce+7c1a.4821-it=fabrikam.com@mg.mailgun.org", "scanner@contoso.com"]
    target = size_mb * 1024 * 1024
    written, n = 0, 0
    with open(path, "w") as fh:
        while written < target:
            buf = []
            for _ in range(2000):
                n += 1
                mid = _id(n * 7919)
                t = f"2026-03-02 {(n // 3600) % 24:02d}:{(n // 60) % 60:02d}:{n % 60:02d}"
                snd = rnd.choice(senders)
                rcpt = f"user{n % 5000}@fabrikam.com"
                buf.append(
                    f"{t} {mid} <= {snd} H=app{n % 40}.corp.contoso.com (app) [203.0.113.{n % 200}]:5{n % 9999} "
                    f"I=[203.0.113.26]:25 P=esmtp S={1000 + n % 90000} id={n}.{mid}@app.contoso.com "
                    f'T="Report {n}" for {rcpt}\n')
                kind = rnd.random()
                if kind < 0.7:
                    buf.append(
                        f"{t} {mid} => {rcpt} R=smarthost T=remote_smtp H={EXO} [192.0.2.210] "
                        f"X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=yes "
                        f'C="250 2.6.0 <{n}@app.contoso.com> [InternalId={n}] Queued mail for delivery"\n')
                elif kind < 0.9:
                    buf.append(
                        f"{t} {mid} ** {rcpt} R=smarthost T=remote_smtp H={EXO} [192.0.2.211] : SMTP "
                        f"error from remote mail server after RCPT TO:<{rcpt}>: 550 5.7.64 "
                        "TenantAttribution; Relay Access Denied [BN8NAM12FT064.eop-nam12.prod.protection.outlook.com]\n")
                else:
                    buf.append(f"{t} {mid} == {rcpt} R=smarthost T=remote_smtp defer (110): "
                               f"Connection timed out H={EXO} [192.0.2.212]\n")
                    buf.append(f"{t} {mid} => {rcpt} R=smarthost T=remote_smtp H={EXO} [192.0.2.210] "
                               'C="250 2.6.0 Queued mail for delivery"\n')
                buf.append(f"{t} {mid} Completed\n")
                if n % 5 == 0:
                    buf.append(f"{t} SMTP connection from app{n % 40}.corp.contoso.com "
                               f"[203.0.113.{n % 200}]:5{n % 9999} closed by QUIT\n")
            chunk = "".join(buf)
            fh.write(chunk)
            written += len(chunk)
    return n


# --- the baseline: what one would write first --------------------------------------------------
LINE = re.compile(r"^(\S+ \S+) (\S{16,23}) (<=|=>|->|\*\*|==|Completed)\s?(.*)$")
SENDER = re.compile(r"^(\S+)")
HOST = re.compile(r"\sH=(\S+) (?:\([^)]*\) )?\[([^\]]+)\]")
SIZE = re.compile(r"\sS=(\d+)")
MSGID = re.compile(r"\sid=(\S+)")
CONF = re.compile(r'\sC="((?:[^"\\]|\\.)*)"')
ERR = re.compile(r": ([45]\d\d .*)$")


def baseline(path: Path) -> int:
    open_msgs: dict[str, dict] = {}
    done = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            m = LINE.match(line.rstrip("\n"))
            if not m:
                continue
            ts, mid, flag, rest = m.groups()
            msg = open_msgs.setdefault(mid, {"ts": ts, "recipients": []})
            if flag == "<=":
                msg["p1"] = SENDER.match(rest).group(1)
                h = HOST.search(rest)
                msg["client_ip"] = h.group(2) if h else None
                s = SIZE.search(rest)
                msg["size"] = int(s.group(1)) if s else None
                i = MSGID.search(rest)
                msg["message_id"] = i.group(1) if i else None
            elif flag == "Completed":
                done.append(open_msgs.pop(mid))
            else:
                msg["recipients"].append(rest.split(" ", 1)[0])
                h = HOST.search(rest)
                if h:
                    msg["relay_host"] = h.group(1)
                c = CONF.search(rest) or ERR.search(rest)
                if c:
                    msg["response"] = c.group(1)
    return len(done) + len(open_msgs)


def pipeline_run(path: Path) -> int:
    from pipeline.ingest import exim
    from pipeline.ingest.base import IngestContext, IngestOptions, Source

    ctx = IngestContext(IngestOptions(chunk_bytes=32 * 1024 * 1024))
    return sum(b.num_rows for b in exim.read([Source(path, host="mailhub")], ctx))


def _child(which: str, path: str) -> None:
    # Imports (pyarrow, pandas: ~0.7 s) are timed apart: the baseline imports nothing, and the
    # question is throughput on the log, not interpreter start-up.
    start = time.perf_counter()
    if which == "pipeline":
        import pipeline.ingest.exim  # noqa: F401
    imported = time.perf_counter()
    rows = pipeline_run(Path(path)) if which == "pipeline" else baseline(Path(path))
    elapsed = time.perf_counter() - imported
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": elapsed, "import_seconds": imported - start,
                      "peak_rss_mb": rss_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mainlog"
        generate(path, args.size_mb)
        mb = path.stat().st_size / 1e6
        results = {}
        for which in ("pipeline", "baseline"):
            out = subprocess.run([sys.executable, __file__, "--child", which, str(path)],
                                 check=True, capture_output=True, text=True).stdout
            results[which] = json.loads(out)
            results[which]["mb_per_s"] = mb / results[which]["seconds"]
        print(f"mainlog: {mb:.1f} MB")
        for which, r in results.items():
            print(f"{which:9s} {r['mb_per_s']:7.1f} MB/s  {r['seconds']:6.2f} s "
                  f"(+{r['import_seconds']:.2f} s imports)  "
                  f"peak RSS {r['peak_rss_mb']:7.1f} MB  rows {r['rows']}")
        ratio = results["pipeline"]["mb_per_s"] / results["baseline"]["mb_per_s"]
        print(f"pipeline / per-line regex baseline: {ratio:.2f}x")


if __name__ == "__main__":
    main()
