"""relay-impact: which relayed messages Exchange Online rejects (or will), why, and what to change.

The library is the product; the `relay-impact` command is a thin layer over it. In a notebook:

    from pipeline import load_config, ingest, evaluate, report
    cfg = load_config("sample_logs/tenant.toml")
    ingest(["sample_logs/"], "out", config=cfg)
    evaluate("out", cfg)
    report("out", ["html", "md", "csv"])
"""

from __future__ import annotations

from pathlib import Path

from .config import TenantConfig, connector_ranges, hygiene_warnings, load_config
from .errors import ConfigError, InputFormatError, RelayImpactError, WorkdirError
from .ingest import ingest as _ingest
from .ingest.base import IngestOptions
from .report import report
from .rules import evaluate, evaluate_table, load_pack, pack_names
from .workdir import read_table, require_dataset

__all__ = [
    "ConfigError",
    "InputFormatError",
    "IngestOptions",
    "RelayImpactError",
    "TenantConfig",
    "WorkdirError",
    "evaluate",
    "evaluate_table",
    "hygiene_warnings",
    "ingest",
    "load_config",
    "load_pack",
    "load_verdicts",
    "pack_names",
    "report",
    "run",
]


def ingest(
    logs, workdir: str | Path, config: TenantConfig | None = None, fmt: str | None = None,
    options: IngestOptions | None = None, progress=None, fresh: bool = False,
) -> dict:
    """Parse logs into WORKDIR/messages (and rejects); the config, when given, supplies the
    hosts' log globs, the relay targets and the connector ranges that some formats use.
    Incremental: files already read into WORKDIR are skipped unless they grew (or `fresh`)."""
    options = options or IngestOptions()
    host_globs = None
    if config is not None:
        options.relay_targets = config.relay_targets
        options.connector_ranges = connector_ranges(config, relay_only=False)
        host_globs = config.host_globs()
    return _ingest(logs, workdir, fmt=fmt, options=options, host_globs=host_globs, progress=progress, fresh=fresh)


def run(
    logs, workdir: str | Path, config: TenantConfig, fmt: str | None = None, pack: str | None = None,
    formats=None, options: IngestOptions | None = None, progress=None, fresh: bool = False,
) -> dict:
    """The main job: ingest, evaluate and report in one go."""
    from .rules import RuleContext

    RuleContext.build(config, pack)  # refuse a pack that does not apply before reading logs
    ingested = ingest(logs, workdir, config=config, fmt=fmt, options=options, progress=progress, fresh=fresh)
    evaluated = evaluate(workdir, config, pack, progress=progress)
    reported = report(workdir, formats)
    return {"ingest": ingested, "evaluate": evaluated, "report": reported}


def load_verdicts(workdir: str | Path, columns: list[str] | None = None):
    """The verdicts dataset of a WORKDIR as a pandas DataFrame (for notebooks)."""
    files = require_dataset(Path(workdir), "verdicts", "run `relay-impact evaluate` first")
    return read_table(files, columns).to_pandas()
