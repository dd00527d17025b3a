"""Benchmark: the rule engine over a synthetic `messages` dataset as ingest writes it.

    python benchmarks/bench_engine.py                 # 10 million messages (issue target)
    python benchmarks/bench_engine.py --messages 2e6  # quicker

Draws messages from a realistic distribution (hundreds of thousands of distinct addresses,
hundreds of domains and IPs, 5% null senders; a few thousand sending profiles, because a host
always relays from the same IP with the same certificate), writes them as the Parquet `messages` dataset,
then in a fresh process runs `evaluate` and reports:
- messages/s of the verdict computation (read the columns the engine needs from Parquet and
  compute every verdict column on the thread pool) and of the whole `evaluate` step (read
  every column, compute, write the verdicts dataset with all messages columns),
- peak RSS of that process,
- the speed-up over the per-message reference implementation (tests/rules/reference.py),
  measured on a sample in the same run.
Target (issue 2): >= 20 M messages/s for the verdict computation, peak memory < 2 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import config_from_dict  # noqa: E402
from pipeline.ingest.base import make_messages  # noqa: E402
from pipeline.schema import MESSAGES  # noqa: E402
from pipeline.workdir import (  # noqa: E402
    DatasetWriter,
    iter_batches,
    read_row_group,
    require_dataset,
    row_groups,
)

TENANT = {
    "accepted_domains": ["contoso.com", "mail.contoso.com", {"name": "corp.contoso.com", "match_subdomains": True}],
    "connectors": [
        {"name": "On-premises relay", "sender_ip_addresses": ["203.0.113.0/24", "198.51.100.0/25"],
         "tls_sender_certificate_name": "mail.contoso.com"},
        {"name": "Partner", "type": "Partner", "sender_ip_addresses": ["192.0.2.0/24"]},
    ],
    "hosts": [{"name": f"host{i:02d}", "egress_ip": f"203.0.113.{i}", "certificate": "mail.contoso.com" if i % 4 == 0 else []}
              for i in range(1, 41)],
}


def _profiles(rng: np.random.Generator, count: int = 3000) -> dict[str, pa.Array]:
    """Sending profiles: who relays what through which host. In real logs a host always has
    the same egress IP and certificate and an application the same P1/P2 domains, so the
    inputs are correlated; the distinct addresses come from the local parts."""
    domains = ["contoso.com", "corp.contoso.com", "erp.corp.local", "em4221.sendgrid.net", "mcsv.net", "amazonses.com"]
    domains += [f"app{i}.contoso.com" for i in range(40)] + [f"partner{i}.example" for i in range(354)]
    hosts = [f"host{i:02d}" for i in range(1, 61)]
    host_ip = {h: (f"203.0.113.{i}" if i < 50 else f"198.51.100.{i}") for i, h in enumerate(hosts, 1)}
    host_ip["host60"] = "2001:db8::60"
    certs = [None, "mail.contoso.com", "mail.contoso.com;autodiscover.contoso.com", "relay.fabrikam.com", "host.corp.local"]
    zipf = 1.0 / np.arange(1, len(domains) + 1) ** 1.1
    p1 = rng.choice(len(domains), count, p=zipf / zipf.sum())
    p2 = np.where(rng.random(count) < 0.7, 0, p1)
    host = rng.integers(0, len(hosts), count)
    logs_ip = rng.random(count) < 0.5  # half the logs carry the relay IP, the rest rely on [[hosts]]
    return {
        "p1_domain": pa.array([domains[i] for i in p1]),
        "p2_domain": pa.array([domains[i] for i in p2]),
        "p2_known": pa.array(rng.random(count) < 0.8),
        "host": pa.array([hosts[i] for i in host]),
        "relay_ip": pa.array([host_ip[hosts[i]] if logged else None for i, logged in zip(host, logs_ip, strict=True)]),
        "tls_cert": pa.array([certs[i % len(certs)] if rng.random() < 0.3 else None for i in host]),
        "relay_host": pa.array(["mx.fabrikam.com" if rng.random() < 0.1 else "contoso-com.mail.protection.outlook.com" for _ in range(count)]),
    }


def generate(workdir: Path, total: int, seed: int = 7) -> None:
    """Write `total` synthetic messages in 1M-row batches (memory stays bounded)."""
    rng = np.random.default_rng(seed)
    prof = _profiles(rng)
    n_prof = len(prof["host"])
    popularity = 1.0 / np.arange(1, n_prof + 1) ** 0.9
    popularity /= popularity.sum()
    rcpt_doms = pa.array(["fabrikam.com", "gmail.example", "contoso.com", "northwind.example", "tailspin.example"])
    batch = 1_000_000
    with DatasetWriter(workdir / "messages", MESSAGES) as writer:
        done = 0
        while done < total:
            n = min(batch, total - done)
            pick = pa.array(rng.choice(n_prof, n, p=popularity))
            users = rng.integers(0, 300_000, n)  # hundreds of thousands of distinct addresses
            local = pc.binary_join_element_wise(pa.array(np.char.mod("u%d", users)), prof["p1_domain"].take(pick), "@")
            null = rng.random(n) < 0.05  # 5% null senders (NDRs)
            p1 = pc.if_else(pa.array(null), pa.scalar(""), local)
            p2 = pc.binary_join_element_wise(pa.array(np.char.mod("s%d", users % 5000)), prof["p2_domain"].take(pick), "@")
            p2 = pc.if_else(prof["p2_known"].take(pick), p2, pa.scalar(None, pa.string()))
            r1 = rcpt_doms.take(pa.array(rng.integers(0, len(rcpt_doms), n)))
            recipients = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)),
                                                  pc.binary_join_element_wise(pa.array(np.char.mod("r%d", users % 977)), r1, "@"))
            cols = {
                "ts": pa.array(1_761_955_200_000_000 + np.sort(rng.integers(0, 30 * 86_400_000_000, n)), pa.timestamp("us", tz="UTC")),
                "source_format": pa.array(["csv"] * n),
                "source_file": pa.array(["synthetic.csv"] * n),
                "source_line": pa.array(np.arange(done + 2, done + n + 2)),
                "host": prof["host"].take(pick),
                "p1_sender": p1,
                "p2_sender": p2,
                "relay_ip": prof["relay_ip"].take(pick),
                "tls_cert": prof["tls_cert"].take(pick),
                "relay_host": prof["relay_host"].take(pick),
                "recipients": recipients,
                "recipient_domains": r1,
                "recipient_count": pa.array(np.ones(n, dtype=np.int32)),
                "is_ndr": pa.array(null),
            }
            writer.write(make_messages(cols, n))
            done += n


def measure_compute(workdir: Path, repeat: int = 3) -> dict:
    """The verdict computation alone: every row group's engine columns read into memory first
    (dictionary-encoded, as Parquet keeps them), then a fresh engine computes every verdict
    column on the thread pool. Best of `repeat` runs, each with a new engine (so each run
    judges every combo anew)."""
    from pipeline.rules import _in_threads
    from pipeline.rules.engine import INPUT_COLUMNS, Engine

    cfg = config_from_dict(TENANT)
    batches = [read_row_group(part, list(INPUT_COLUMNS)) for part in row_groups(require_dataset(workdir, "messages", ""))]
    rows = sum(b.num_rows for b in batches)
    best = float("inf")
    for _ in range(repeat):
        engine = Engine(cfg)
        start = time.perf_counter()
        for out in _in_threads(engine.verdict_columns, batches):
            assert len(out["impact"])
        best = min(best, time.perf_counter() - start)
    return {"messages": rows, "compute_s": best}


def measure_streaming(workdir: Path) -> dict:
    """As `evaluate` streams it: row groups read on the worker threads and evaluated, results
    dropped; then `evaluate` itself (which also writes the verdicts dataset). Peak RSS is this
    process's, so it is the streaming evaluation's own."""
    from pipeline.rules import _in_threads, evaluate
    from pipeline.rules.engine import INPUT_COLUMNS, Engine

    cfg = config_from_dict(TENANT)
    files = require_dataset(workdir, "messages", "")
    engine = Engine(cfg)
    rows = 0
    start = time.perf_counter()
    for out in _in_threads(lambda part: engine.verdict_columns(read_row_group(part, list(INPUT_COLUMNS))), row_groups(files)):
        rows += len(out["impact"])
    read_compute = time.perf_counter() - start
    start = time.perf_counter()
    evaluate(workdir, cfg)
    whole = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"messages": rows, "read_compute_s": read_compute, "whole_s": whole, "peak_rss_mb": peak_mb}


def _child(phase: str, workdir: Path) -> dict:
    """Run one measurement in a fresh process, so its peak RSS is its own."""
    out = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--workdir", str(workdir)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def reference_speed(workdir: Path, sample: int = 20_000) -> tuple[float, float]:
    """(reference msgs/s, engine msgs/s) on the same sample rows."""
    from pipeline.rules.engine import Engine
    from tests.rules.reference import Reference

    cfg = config_from_dict(TENANT)
    batch = next(iter_batches(require_dataset(workdir, "messages", ""), batch_size=sample))
    rows = batch.to_pylist()
    ref = Reference(cfg)
    t0 = time.perf_counter()
    for r in rows:
        ref.judge(r)
    ref_rate = len(rows) / (time.perf_counter() - t0)
    engine = Engine(cfg)
    engine.evaluate_batch(batch)  # warm the per-dictionary cache as a long run would
    t0 = time.perf_counter()
    engine.evaluate_batch(batch)
    eng_rate = len(rows) / (time.perf_counter() - t0)
    return ref_rate, eng_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=float, default=10e6)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the generated dataset here (reused when present)")
    ap.add_argument("--phase", choices=["all", "compute", "streaming"], default="all")
    args = ap.parse_args()
    if args.phase != "all":
        fn = measure_compute if args.phase == "compute" else measure_streaming
        print(json.dumps(fn(args.workdir)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        workdir = args.workdir or Path(tmp)
        total = int(args.messages)
        if not (workdir / "messages").is_dir():
            t0 = time.perf_counter()
            generate(workdir, total)
            print(f"generated {total:,} messages in {time.perf_counter() - t0:.1f} s")
        c = _child("compute", workdir)
        m = _child("streaming", workdir)
        ref_rate, eng_rate = reference_speed(workdir)
        rate = c["messages"] / c["compute_s"]
        print(f"messages: {c['messages']:,}")
        print(f"verdict computation (every verdict column, fresh engine, 2 threads): {rate / 1e6:.1f} M messages/s ({c['compute_s']:.2f} s)")
        print(f"read from Parquet + verdict computation, streamed: {m['messages'] / m['read_compute_s'] / 1e6:.1f} M messages/s")
        print(f"whole evaluate step (read + compute + write the verdicts dataset): {m['messages'] / m['whole_s'] / 1e6:.2f} M messages/s")
        print(f"peak RSS of the streaming evaluation process: {m['peak_rss_mb']:.0f} MB")
        print(f"reference implementation: {ref_rate:,.0f} messages/s; engine on the same 20k sample: {eng_rate:,.0f}/s")
        print(f"speed-up of the engine (full run) over the reference: {rate / ref_rate:,.0f}x")
        print(f"target >= 20 M/s: {'met' if rate >= 20e6 else 'NOT met'}; peak < 2 GB: {'met' if m['peak_rss_mb'] < 2048 else 'NOT met'}")


if __name__ == "__main__":
    main()
