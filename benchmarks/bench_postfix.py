"""Postfix ingest benchmark: throughput and peak RSS against two baselines in the same run.

    .venv/bin/python benchmarks/bench_postfix.py --size-mb 1024

1. generates a Postfix smart-host log of the given size (default 1 GB; kept between runs),
2. relay-impact's `postfix.read` (vectorized, two threads), in a child process so its peak RSS
   is its own,
3. `pflogsumm` (Debian package; installed with apt-get when missing, or reported as skipped),
4. a straightforward per-line Python regex parser that builds the same per-message table.

Targets (issue 4): >= 200 MB/s, >= 2x the per-line parser, >= 5x pflogsumm, peak RSS < 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_FILE = Path(tempfile.gettempdir()) / "relay-impact-bench" / "maillog"


# ---- the generated log -------------------------------------------------------------------------

_APPS = [
    ("erp01.corp.contoso.com", "203.0.113.50", "noreply@erp.corp.local", "invoices@contoso.com"),
    ("mon01.corp.contoso.com", "203.0.113.60", "monitoring@contoso.com", "monitoring@contoso.com"),
    ("crm01.corp.contoso.com", "203.0.113.52", "bounces+4411-8f2c=x@em123.sendgrid.net", "news@contoso.com"),
    ("unknown", "203.0.113.71", "scanner3f@printers.example", "scanner3f@printers.example"),
]
_EXO = "contoso-com.mail.protection.outlook.com[198.51.100.201]:25"


def _message(t: str, qid: str, pid: int, rng: random.Random) -> list[str]:
    host, ip, p1, p2 = rng.choice(_APPS)
    rcpt = f"user{rng.randrange(10000)}@fabrikam.com"
    pre = f"{t} relay01 postfix/"
    lines = [
        f"{pre}smtpd[{pid}]: connect from {host}[{ip}]",
        f"{pre}smtpd[{pid}]: {qid}: client={host}[{ip}]",
        f"{pre}cleanup[{pid + 1}]: {qid}: message-id=<{qid}.{pid}@{host}>",
        f"{pre}cleanup[{pid + 1}]: {qid}: info: header From: App <{p2}> from {host}[{ip}]; "
        f"from=<{p1}> to=<{rcpt}> proto=ESMTP helo=<{host}>",
        f"{pre}qmgr[1021]: {qid}: from=<{p1}>, size={rng.randrange(900, 90000)}, nrcpt=1 (queue active)",
        f"{pre}smtpd[{pid}]: disconnect from {host}[{ip}] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
        f"{pre}smtp[{pid + 2}]: Trusted TLS connection established to {_EXO}: TLSv1.2 with cipher "
        "ECDHE-RSA-AES256-GCM-SHA384 (256/256 bits)",
    ]
    if rng.random() < 0.05:
        lines.append(
            f"{pre}smtp[{pid + 2}]: {qid}: to=<{rcpt}>, relay={_EXO}, delay=2.4, "
            "delays=0.6/0.01/0.9/0.9, dsn=5.7.64, status=bounced (host "
            "contoso-com.mail.protection.outlook.com[198.51.100.201] said: 550 5.7.64 "
            "TenantAttribution; Relay Access Denied [AM0PR01MB1234.eurprd01.prod.exchangelabs.com] "
            "(in reply to MAIL FROM command))"
        )
    else:
        lines.append(
            f"{pre}smtp[{pid + 2}]: {qid}: to=<{rcpt}>, relay={_EXO}, delay=0.9, "
            "delays=0.1/0.01/0.3/0.49, dsn=2.6.0, status=sent (250 2.6.0 <x> [InternalId=41231686"
            "04161, Hostname=AM0PR01MB1234.eurprd01.prod.exchangelabs.com] Queued mail for delivery)"
        )
    lines.append(f"{pre}qmgr[1021]: {qid}: removed")
    return lines


def generate(path: Path, size_mb: int, seed: int = 4) -> None:
    """A realistic smart-host log of about size_mb MB (queue ids reused, time ascending)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    target = size_mb * 1024 * 1024
    written = 0
    sec = 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < target:
            day, rem = divmod(sec, 86400)
            t = f"Nov {1 + day % 28:2d} {rem // 3600:02d}:{rem % 3600 // 60:02d}:{rem % 60:02d}"
            buf = []
            for k in range(200):
                qid = f"{rng.randrange(16**10):010X}"
                buf.extend(_message(t, qid, 1000 + k * 3, rng))
            text = "\n".join(buf) + "\n"
            fh.write(text)
            written += len(text)
            sec += 1


# ---- relay-impact ------------------------------------------------------------------------------


def run_ours(path: Path) -> dict:
    """Child process: ingest the file with postfix.read, report time, rows and peak RSS."""
    code = (
        "import json,resource,sys,time\n"
        "from pathlib import Path\n"
        "from pipeline.ingest import postfix\n"
        "from pipeline.ingest.base import IngestContext, IngestOptions, Source\n"
        "ctx=IngestContext(IngestOptions(year=2026))\n"
        "t=time.perf_counter(); rows=0\n"
        "for b in postfix.read([Source(Path(sys.argv[1]))], ctx): rows+=b.num_rows\n"
        "dt=time.perf_counter()-t\n"
        "tot=ctx.accounting.totals()\n"
        # VmHWM: this process's own peak. ru_maxrss keeps the high-water mark of the process it
        # was forked from (the parent, which has just held the per-line parser's dicts).
        "hwm=[l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
        "rss=int(hwm[0])/1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024\n"
        "print(json.dumps({'seconds':dt,'rows':rows,'lines':tot['lines'],"
        "'rejected':tot['rejected_lines'],'peak_rss_mb':rss}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- baseline: per-line Python regex parser ----------------------------------------------------

_LINE = re.compile(r"^(\w{3} [ \d]\d \d\d:\d\d:\d\d) (\S+) (postfix[^\[]*)\[\d+\]: (.*)$")
_QID = re.compile(r"^([0-9A-F]{5,}|[0-9A-Za-z]{10,}z[0-9A-Za-z]+): (.*)$")
_CLIENT = re.compile(r"^client=[^\[]*\[([^\]]*)\]")
_HEADER = re.compile(r"^\w+: header From: (.*) from [^;]*; from=<([^>]*)>")
_QMGR = re.compile(r"^from=<([^>]*)>, size=(\d+)")
_TO = re.compile(r"^to=<([^>]*)>,.*? relay=([^\[,]*)[^,]*, .*?status=(\w+)(?: \((.*)\))?$")


def run_per_line(path: Path) -> dict:
    """The straightforward parser: one regex pass per line, a dict of open messages."""
    t = time.perf_counter()
    open_msgs: dict[tuple[str, str], dict] = {}
    table: list[dict] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            m = _LINE.match(line.rstrip("\n"))
            if not m:
                continue
            ts, host, _tag, msg = m.groups()
            q = _QID.match(msg)
            if not q:
                continue
            qid, rest = q.groups()
            key = (host, qid)
            if rest.startswith("client="):
                c = _CLIENT.match(rest)
                open_msgs[key] = {"ts": ts, "host": host, "qid": qid, "client_ip": c and c.group(1)}
                continue
            cur = open_msgs.setdefault(key, {"ts": ts, "host": host, "qid": qid})
            if rest.startswith("message-id="):
                cur["message_id"] = rest[11:]
            elif ": header " in rest:
                h = _HEADER.match(rest)
                if h:
                    cur["p2"] = h.group(1)
                    cur.setdefault("p1", h.group(2))
            elif rest.startswith("from=<"):
                g = _QMGR.match(rest)
                if g:
                    cur["p1"], cur["size"] = g.group(1), int(g.group(2))
            elif rest.startswith("to="):
                d = _TO.match(rest)
                if d:
                    cur.setdefault("recipients", []).append(d.group(1))
                    cur["relay_host"], cur["status"], cur["response"] = d.group(2, 3, 4)
            elif rest == "removed":
                table.append(open_msgs.pop(key))
    table.extend(open_msgs.values())
    return {"seconds": time.perf_counter() - t, "rows": len(table)}


# ---- baseline: pflogsumm -----------------------------------------------------------------------


def ensure_pflogsumm() -> str | None:
    exe = shutil.which("pflogsumm")
    if exe:
        return exe
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "pflogsumm"], check=True, capture_output=True, timeout=600
        )
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"pflogsumm: not installed and `apt-get install -y pflogsumm` failed ({exc})")
        return None
    return shutil.which("pflogsumm")


def run_pflogsumm(exe: str, path: Path) -> dict:
    t = time.perf_counter()
    subprocess.run([exe, str(path)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {"seconds": time.perf_counter() - t}


# ---- main --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--file", type=Path, default=DEFAULT_FILE)
    ap.add_argument("--skip-pflogsumm", action="store_true")
    ap.add_argument(
        "--repeat", type=int, default=1,
        help="run the three parsers N times, interleaved, and keep each one's best time "
        "(on a shared machine a burst of load otherwise decides the ratios)",
    )
    args = ap.parse_args()
    path = args.file
    want = args.size_mb * 1024 * 1024
    if not path.exists() or abs(path.stat().st_size - want) > want * 0.05:
        print(f"generating {args.size_mb} MB Postfix log at {path} ...")
        generate(path, args.size_mb)
    mb = path.stat().st_size / 1024 / 1024
    os.sched_setaffinity(0, os.sched_getaffinity(0))  # all cores we are allowed
    results: dict[str, dict] = {}
    exe = None if args.skip_pflogsumm else ensure_pflogsumm()
    runs = {"relay-impact": run_ours, "per-line regex": run_per_line}
    if exe:
        runs["pflogsumm"] = lambda p: run_pflogsumm(exe, p)
    all_times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(max(1, args.repeat)):
        for name, fn in runs.items():
            r = fn(path)
            all_times[name].append(r["seconds"])
            if name not in results or r["seconds"] < results[name]["seconds"]:
                results[name] = r
    print(f"\nfile: {path} ({mb:.0f} MB), cores: {len(os.sched_getaffinity(0))}")
    if args.repeat > 1:
        for name, times in all_times.items():
            print(f"{name:16s} all runs (s): {', '.join(f'{t:.2f}' for t in times)}")
        print(f"best of {args.repeat} runs each:")
    for name, r in results.items():
        r["mb_per_s"] = mb / r["seconds"]
        extra = "".join(
            f", {k}={v:.0f}" if isinstance(v, float) else f", {k}={v}"
            for k, v in r.items()
            if k not in ("seconds", "mb_per_s")
        )
        print(f"{name:16s} {r['seconds']:8.2f} s  {r['mb_per_s']:8.1f} MB/s{extra}")
    ours = results["relay-impact"]["mb_per_s"]
    print(f"\nspeed-up vs per-line regex: {ours / results['per-line regex']['mb_per_s']:.2f}x")
    if "pflogsumm" in results:
        print(f"speed-up vs pflogsumm:      {ours / results['pflogsumm']['mb_per_s']:.2f}x")
    else:
        print("pflogsumm: not measured (not installed)")
    print(f"this process peak RSS (baseline parser): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
