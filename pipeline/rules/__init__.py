"""Rule packs (data) and the vectorized engine that applies them."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..config import TenantConfig
from ..schema import VERDICTS
from ..workdir import DatasetWriter, read_row_group, require_dataset, row_groups, write_json
from .engine import Engine, RuleContext
from .packs import Pack, load_pack, pack_names

__all__ = ["Engine", "Pack", "RuleContext", "evaluate", "evaluate_table", "load_pack", "pack_names"]


def evaluate_table(messages, config: TenantConfig, pack: str | Pack | None = None):
    """Verdicts for an in-memory messages table or batch (notebooks, tests)."""
    import pyarrow as pa

    engine = Engine(config, pack)
    batches = messages.to_batches() if isinstance(messages, pa.Table) else [messages]
    out = [engine.evaluate_batch(b) for b in batches]
    return pa.Table.from_batches(out, schema=VERDICTS) if out else VERDICTS.empty_table()


def _in_threads(fn, batches, workers: int | None = None):
    """fn over batches (or the row groups to read them from) on a small thread pool, results
    in input order, at most 2 per worker in flight (memory stays bounded). Arrow and NumPy
    kernels release the GIL, so cores add up."""
    workers = workers or min(4, os.cpu_count() or 1)
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for batch in batches:
            pending.append(pool.submit(fn, batch))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def evaluate(workdir: str | Path, config: TenantConfig, pack: str | Pack | None = None, progress=None) -> dict:
    """Stream WORKDIR/messages through the engine into WORKDIR/verdicts (bounded memory)."""
    workdir = Path(workdir)
    files = require_dataset(workdir, "messages", "run `relay-impact ingest LOGS --out WORKDIR` first")
    engine = Engine(config, pack)
    with DatasetWriter(workdir / "verdicts", VERDICTS) as writer:

        def one_row_group(job: tuple[int, tuple[Path, int]]) -> int:
            """Read, judge and write one row group on a worker thread: every step uses
            both cores, and only one row group per worker is in memory."""
            index, part = job
            writer.write_part(index, engine.evaluate_batch(read_row_group(part)))
            return writer.rows

        for rows in _in_threads(one_row_group, enumerate(row_groups(files))):
            if progress:
                progress(rows)
    info = {
        "rule_pack": engine.rc.pack.name,
        "config": config.path,
        "messages": writer.rows,
        "warnings": dict(engine.warnings.most_common()),
    }
    write_json(workdir / "evaluate.json", info)
    return info
