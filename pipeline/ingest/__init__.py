"""Ingest: expand inputs, detect each file's format, and let each format module parse its files.

The registry is the ordered tuple FORMATS: detection asks each module in this order and takes
the first that recognises the file's head, so more specific formats come first. `--format NAME`
and detection share `resolve_format`, so there is exactly one code path.
"""

from __future__ import annotations

import fnmatch
import glob
import importlib
import time
import uuid
import zipfile
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import pyarrow as pa

from ..errors import InputFormatError
from ..schema import MESSAGES, REJECTS
from ..workdir import DatasetWriter, dataset_files, read_json, write_json
from .base import Accounting, IngestContext, IngestOptions, Source

# Module names under pipeline.ingest, in detection order (most specific first).
FORMATS: tuple[str, ...] = (
    "exchange_protocol",
    "exchange_tracking",
    "exo_trace",
    "iis_smtp",
    "exim",
    "sendmail",
    "postfix",
    "csv_canonical",
)


def _load(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"{__name__}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{module}":
            return None  # format not built yet
        raise


def registry() -> list[ModuleType]:
    """The available format modules, in detection order."""
    return [m for m in (_load(name) for name in FORMATS) if m is not None]


def format_names() -> list[str]:
    return [m.NAME for m in registry()]


def get_format(name: str) -> ModuleType:
    for m in registry():
        if name == m.NAME:
            return m
    raise InputFormatError(
        f"unknown format {name!r}; expected one of: {', '.join(format_names())}"
    )


def resolve_format(source: Source, forced: str | None = None) -> ModuleType:
    """The format module for `source`: the forced one, or the first whose detect() says yes."""
    if forced:
        return get_format(forced)
    head = source.head()
    if not head.strip():
        raise InputFormatError(f"{source.name}: the file is empty; expected a mail log")
    for module in registry():
        if module.detect(head):
            return module
    raise InputFormatError(
        f"{source.name}: not a log format relay-impact recognises "
        f"(expected one of: {', '.join(format_names())}); "
        "name it with --format, or convert it to the canonical CSV (--format csv)"
    )


def expand_inputs(
    inputs: Iterable[str | Path], host: str | None = None, host_globs: dict[str, list[str]] | None = None
) -> list[Source]:
    """Files, folders (recursive), globs, .gz files and .zip archives -> Sources.

    A file's host comes from `host` (--host) or else from the first `[[hosts]]` entry whose
    `logs` globs match its path.
    """
    sources: list[Source] = []
    for item in inputs:
        item = str(item)
        paths: list[Path]
        if any(ch in item for ch in "*?["):
            paths = [Path(p) for p in sorted(glob.glob(item, recursive=True))]
            if not paths:
                raise InputFormatError(f"{item}: the pattern matches no file")
        else:
            p = Path(item)
            if not p.exists():
                raise InputFormatError(f"{item}: no such file or folder")
            paths = [p]
        for p in paths:
            walked = p.is_dir()
            if walked:
                files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            else:
                files = [p]
            for f in files:
                if walked and f.suffix.lower() in (".toml", ".md", ".json"):
                    continue  # a config, README or export next to the logs is not a log
                h = host or _host_for(f, host_globs or {})
                if f.suffix.lower() == ".zip":
                    sources.extend(_zip_members(f, h))
                else:
                    sources.append(Source(f, host=h, in_folder=walked))
    return sources


def _host_for(path: Path, host_globs: dict[str, list[str]]) -> str | None:
    text = str(path)
    resolved = str(path.resolve())
    for name, patterns in host_globs.items():
        for pat in patterns:
            if fnmatch.fnmatch(text, pat) or fnmatch.fnmatch(resolved, pat) or fnmatch.fnmatch(
                path.name, pat
            ):
                return name
    return None


def _zip_members(path: Path, host: str | None) -> list[Source]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
    except (OSError, zipfile.BadZipFile) as exc:
        raise InputFormatError(f"{path}: not a readable .zip archive ({exc})") from exc
    return [Source(path, member=n, host=host, in_folder=True) for n in sorted(names)]


def ingest(
    inputs: Iterable[str | Path],
    workdir: str | Path,
    fmt: str | None = None,
    options: IngestOptions | None = None,
    host_globs: dict[str, list[str]] | None = None,
    progress=None,
    fresh: bool = False,
) -> dict:
    """Parse the logs into WORKDIR/messages and WORKDIR/rejects; return the line accounting.

    Incremental unless `fresh`: files read by an earlier run into the same WORKDIR are skipped
    when unchanged or merely rotated, and re-read (their earlier rows replaced) when they grew
    (pipeline/manifest.py). Files are grouped by format; each format reads all of its files.
    """
    from ..manifest import Manifest

    options = options or IngestOptions()
    workdir = Path(workdir)
    sources = expand_inputs(inputs, host=options.host, host_globs=host_globs)
    if not sources:
        raise InputFormatError("no input files given")
    manifest = Manifest(workdir)
    if fresh:
        manifest.files = {}
    plan = manifest.plan(sources, frozenset() if fresh else _files_with_open_messages(workdir / "messages"))
    groups: dict[str, tuple[ModuleType, list[Source]]] = {}
    unrecognised: dict[str, str] = {}
    for src in plan.to_read:
        try:
            module = resolve_format(src, fmt)
        except InputFormatError as exc:
            if not src.in_folder:
                raise  # a file the user named must be readable: one clear error
            # Other files in a log folder (auth.log, a PDF) are listed, not fatal.
            unrecognised[src.name] = str(exc).split(": ", 1)[-1]
            continue
        groups.setdefault(module.NAME, (module, []))[1].append(src)
    plan.to_read = [s for s in plan.to_read if s.name not in unrecognised]
    if not groups and unrecognised and not plan.skipped:
        raise InputFormatError(
            f"no recognised mail log among {len(unrecognised)} files, e.g. "
            + "; ".join(f"{k}: {v}" for k, v in list(unrecognised.items())[:3])
        )

    previous = {} if fresh else read_json(workdir / "ingest.json").get("files", {})
    run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{uuid.uuid4().hex[:8]}"  # unique part names
    with DatasetWriter(workdir / "rejects", REJECTS, prefix=f"run-{run_id}") as rejects, DatasetWriter(
        workdir / "messages", MESSAGES, prefix=f"run-{run_id}"
    ) as messages:
        renames = plan.renames(manifest)
        if not fresh:
            _carry_over(workdir / "messages", messages, plan.replaced, renames)
            _carry_over(workdir / "rejects", rejects, plan.replaced, renames)
        ctx = IngestContext(
            options,
            reject_sink=rejects.write,
            all_sources={name: files for name, (_m, files) in groups.items()},
        )
        for _name, (module, files) in groups.items():
            for batch in module.read(files, ctx):
                messages.write(batch)
                if progress:
                    progress(messages.rows)
    manifest.update(plan)
    manifest.save()
    previous = {renames.get(k, k): v for k, v in previous.items()}
    files_acc = {k: v for k, v in previous.items() if k not in plan.replaced and k not in ctx.accounting.files}
    files_acc.update(ctx.accounting.to_json()["files"])
    merged = Accounting()
    for name, entry in files_acc.items():
        f = merged.file(name, entry["format"])
        f["lines"], f["parsed"] = entry["lines"], entry["parsed"]
        f["skipped"].update(entry["skipped"])
        f["rejected"].update(entry["rejected"])
    summary = merged.to_json()
    summary["messages"] = messages.rows
    summary["this_run"] = {
        "files_read": [s.name for s in plan.to_read],
        "files_skipped": {**plan.skipped, **{k: f"not read: {v}" for k, v in unrecognised.items()}},
        "totals": ctx.accounting.totals(),
    }
    summary["formats"] = {name: [s.name for s in files] for name, (_m, files) in groups.items()}
    write_json(workdir / "ingest.json", summary)
    return summary


def _files_with_open_messages(directory: Path) -> frozenset[str]:
    """source_file values of the rows an earlier run left incomplete (messages still open at
    the end of its input), read off two columns of the messages dataset."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    names: set[str] = set()
    for part in dataset_files(directory):
        t = pq.read_table(part, columns=["source_file", "incomplete"])
        open_rows = t.filter(pc.fill_null(t.column("incomplete"), False))
        names.update(pc.unique(open_rows.column("source_file").cast(pa.string())).to_pylist())
    return frozenset(n for n in names if n is not None)


def _carry_over(directory: Path, writer: DatasetWriter, replaced: set[str], renames: dict[str, str]) -> None:
    """Keep the earlier parts of a dataset, minus the rows of files being read again, and with
    the rows of rotated files relabelled with their new name. Untouched parts are linked."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    touched = pa.array(sorted(replaced | set(renames)), pa.string())
    for part in dataset_files(directory):
        pf = pq.ParquetFile(part)
        if pf.metadata.num_rows == 0:
            continue
        names = pq.read_table(part, columns=["source_file"]).column("source_file").cast(pa.string())
        if not len(touched) or not pc.any(pc.is_in(names, value_set=touched)).as_py():
            writer.carry(part)
            continue
        for batch in pf.iter_batches():
            source = batch.column("source_file").cast(pa.string())
            if replaced:
                keep = pc.invert(pc.is_in(source, value_set=pa.array(sorted(replaced), pa.string())))
                batch, source = batch.filter(keep), source.filter(keep)
            for old, new in renames.items():
                source = pc.if_else(pc.equal(source, old), pa.scalar(new), source)
            idx = batch.schema.get_field_index("source_file")
            writer.write(batch.set_column(idx, "source_file", pc.dictionary_encode(source)))
