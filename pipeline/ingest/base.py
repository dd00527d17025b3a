"""What every ingest format module shares: the input `Source`, the per-run `IngestContext` that
counts every line, and `make_messages`, which turns a format's columns into the `messages` schema.

A format module is a plain module with:

    NAME: str                     # e.g. "postfix"; what --format takes
    DESCRIPTION: str              # one line for `relay-impact formats`, says how it is detected
    def detect(head: bytes) -> bool          # first 64 KiB of a file, already decompressed
    def read(sources: list[Source], ctx: IngestContext) -> Iterator[pa.RecordBatch]

`read` receives every file of its format at once (so rotated files, or a tracking log and its
protocol log, can be correlated), yields `messages` batches built with `make_messages`, and
accounts for every input line through `ctx`: in a message row (`ctx.parsed`), a documented
non-message line (`ctx.skipped(reason, n)`), or a reject (`ctx.reject_lines(...)`).
"""

from __future__ import annotations

import codecs
import io
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputFormatError
from ..normalize import (
    domain_of,
    envelope_sender,
    header_sender,
    normalise_domain,
)
from ..schema import MESSAGES, REJECTS

HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Source:
    """One input file: a plain path, or a member of a .zip; .gz is decompressed transparently."""

    path: Path
    member: str | None = None  # name inside a .zip
    host: str | None = None  # from --host or a [[hosts]] logs glob
    in_folder: bool = False  # found by walking a folder (or archive), not named by the user

    @property
    def name(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    def open(self) -> IO[bytes]:
        """A binary stream of the (decompressed) content."""
        try:
            if self.member is not None:
                zf = zipfile.ZipFile(self.path)
                raw = zf.open(self.member)
                if self.member.lower().endswith(".gz"):
                    import gzip

                    return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
                return raw
            if self.path.suffix.lower() == ".gz":
                import gzip

                return gzip.open(self.path, "rb")  # type: ignore[return-value]
            return open(self.path, "rb")
        except (OSError, zipfile.BadZipFile) as exc:
            raise InputFormatError(f"{self.name}: cannot be read ({exc})") from exc

    def head(self, n: int = HEAD_BYTES) -> bytes:
        try:
            with self.open() as fh:
                return fh.read(n)
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise InputFormatError(f"{self.name}: cannot be read ({exc})") from exc


def sniff_encoding(head: bytes) -> str:
    """Encoding of a text file from its first bytes: BOMs first, then the NUL-byte pattern that
    UTF-16LE without a BOM shows (Exchange Online extended reports), else UTF-8."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith(codecs.BOM_UTF16_LE):
        return "utf-16"
    if head.startswith(codecs.BOM_UTF16_BE):
        return "utf-16"
    sample = head[:4096]
    if len(sample) >= 4 and sample[1::2].count(0) > len(sample) // 4 and sample[0::2].count(0) == 0:
        return "utf-16-le"
    return "utf-8"


def decode_head(head: bytes) -> str:
    """The head as text whatever its encoding (for detect functions)."""
    enc = sniff_encoding(head)
    if enc.startswith("utf-16") and len(head) % 2:
        head = head[:-1]
    return head.decode(enc, errors="replace")


def text_stream(source: Source) -> tuple[IO[str], str]:
    """A text stream of the source with its sniffed encoding; undecodable bytes are replaced
    (never a crash), which keeps line numbers right."""
    enc = sniff_encoding(source.head(4096))
    return io.TextIOWrapper(source.open(), encoding=enc, errors="replace", newline=""), enc


def whole_string(buf: bytes | np.ndarray, size: int) -> pa.StringArray | None:
    """buf[:size] as one string value, without a copy; None when it is not valid UTF-8
    (Arrow checks the whole buffer at once)."""
    arr = pa.Array.from_buffers(pa.string(), 1, [
        None, pa.py_buffer(np.array([0, size], np.int32)), pa.py_buffer(buf)])
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        return None
    return arr


def utf8_replaced(buf: bytes | np.ndarray, size: int) -> bytes:
    """buf[:size] with undecodable bytes replaced by U+FFFD. Line ends are untouched, so line
    numbers stay right."""
    return bytes(memoryview(buf)[:size]).decode("utf-8", errors="replace").encode("utf-8")


class _Utf8Bytes(io.RawIOBase):
    """A text stream served as UTF-8 bytes."""

    def __init__(self, text: IO[str]):
        self._text = text
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._pending:
            piece = self._text.read(1 << 20)
            self._pending = memoryview(piece.encode("utf-8", errors="replace"))
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._text.close()
        super().close()


def utf8_stream(source: Source) -> IO[bytes]:
    """The source as clean UTF-8 bytes whatever its encoding, a BOM dropped and undecodable
    bytes replaced: pyarrow's CSV reader stops the whole file at one invalid byte (it
    validates UTF-8 strictly and decodes other encodings strictly), and a report export that a
    tool re-saved may hold one."""
    text, _enc = text_stream(source)
    return io.BufferedReader(_Utf8Bytes(text), 1 << 20)


@dataclass
class Accounting:
    """Where every input line went. read == parsed + skipped + rejected, per file and in total."""

    files: dict[str, dict] = field(default_factory=dict)

    def file(self, name: str, fmt: str) -> dict:
        return self.files.setdefault(
            name,
            {"format": fmt, "lines": 0, "parsed": 0, "skipped": Counter(), "rejected": Counter()},
        )

    def totals(self) -> dict:
        skipped: Counter = Counter()
        rejected: Counter = Counter()
        lines = parsed = 0
        for f in self.files.values():
            lines += f["lines"]
            parsed += f["parsed"]
            skipped.update(f["skipped"])
            rejected.update(f["rejected"])
        return {
            "files": len(self.files),
            "lines": lines,
            "parsed": parsed,
            "skipped": dict(skipped),
            "rejected": dict(rejected),
            "skipped_lines": sum(skipped.values()),
            "rejected_lines": sum(rejected.values()),
        }

    def to_json(self) -> dict:
        return {
            "totals": self.totals(),
            "files": {
                k: {**v, "skipped": dict(v["skipped"]), "rejected": dict(v["rejected"])}
                for k, v in self.files.items()
            },
        }


@dataclass
class IngestOptions:
    """Options every format may honour (from the CLI or the library call)."""

    host: str | None = None  # host name for logs that do not name it
    tz: tzinfo | None = None  # local time zone of logs written in local time (syslog, Exim)
    year: int | None = None  # year for RFC 3164 timestamps that lack one
    dayfirst: bool | None = None  # culture hint for PowerShell-exported dates
    date_format: str | None = None  # explicit strptime format for exported dates
    relay_targets: tuple[str, ...] = ("*.mail.protection.outlook.com",)
    connector_ranges: tuple = ()  # (lo, hi) IPv4 ints of configured connectors, for trace exports
    chunk_bytes: int = 64 * 1024 * 1024  # streaming block size


class IngestContext:
    """Handed to a format's `read`: options, and the sinks for accounting and rejects."""

    def __init__(
        self, options: IngestOptions | None = None, reject_sink: Callable | None = None,
        all_sources: dict[str, list[Source]] | None = None,
    ):
        self.options = options or IngestOptions()
        self.accounting = Accounting()
        self._reject_sink = reject_sink or (lambda table: None)
        # Every file of this ingest by format NAME, so a format can join another's files
        # (Exchange tracking rows gain the certificate and reply of the SMTP send log).
        self.all_sources: dict[str, list[Source]] = all_sources or {}

    # --- accounting -------------------------------------------------------------------------
    def lines_read(self, source: str, fmt: str, n: int) -> None:
        self.accounting.file(source, fmt)["lines"] += n

    def parsed(self, source: str, fmt: str, n: int) -> None:
        self.accounting.file(source, fmt)["parsed"] += n

    def skipped(self, source: str, fmt: str, reason: str, n: int = 1) -> None:
        if n:
            self.accounting.file(source, fmt)["skipped"][reason] += n

    def reject_lines(
        self, fmt: str, source: str, lines: pa.Array | list, reasons: pa.Array | list | str,
        raws: pa.Array | list,
    ) -> None:
        """Record malformed lines (vectors of line numbers, reasons, raw text) as rejects."""
        n = len(lines)
        if not n:
            return
        if isinstance(reasons, str):
            reasons = pa.array([reasons] * n, pa.string())
        reasons_arr = pa.array(reasons, pa.string()) if isinstance(reasons, list) else reasons
        raw_arr = pa.array(raws, pa.string()) if isinstance(raws, list) else raws
        table = pa.table(
            {
                "source_format": pa.array([fmt] * n, pa.string()),
                "source_file": pa.array([source] * n, pa.string()),
                "source_line": pa.array(lines, pa.int64()),
                "reason": reasons_arr,
                "raw": pc.utf8_slice_codeunits(raw_arr.cast(pa.string()), 0, 2000),
            }
        )
        counts = table.group_by("reason").aggregate([("reason", "count")])
        acc = self.accounting.file(source, fmt)["rejected"]
        for reason, count in zip(
            counts.column("reason").to_pylist(), counts.column("reason_count").to_pylist(), strict=True
        ):
            acc[reason] += count
        self._reject_sink(table.cast(REJECTS))


def _distinct(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """A string column as (distinct values, index of each row's value): what per_distinct
    works on, kept so that several derivations share one hash pass."""
    enc = arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr.cast(pa.string()))
    return enc.dictionary.cast(pa.string()), enc.indices


def _recipient_domains(recipients: pa.Array) -> pa.Array:
    """normalize.list_domains_joined (the distinct domains of each row, sorted, ';'-joined, null
    for none), with domain_of run once per distinct address and the per-row sort done on
    integer ranks of the distinct domains instead of a string sort of every recipient."""
    n = len(recipients)
    if n == 0:
        return pa.array([], pa.string())
    addresses, addr_idx = _distinct(pc.list_flatten(recipients))
    parents = pc.list_parent_indices(recipients).to_numpy()
    domains, dom_of_addr = _distinct(domain_of(addresses))
    # Rank of each distinct domain in byte order (what a string sort gives), per recipient.
    order = pc.sort_indices(domains).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    a = pc.fill_null(addr_idx, -1).to_numpy(zero_copy_only=False)
    d = np.full(len(a), -1, dtype=np.int64)
    d[a >= 0] = pc.fill_null(dom_of_addr, -1).to_numpy(zero_copy_only=False)[a[a >= 0]]
    has = d >= 0
    # Distinct (row, domain rank) pairs, sorted: each row's distinct domains in order.
    width = max(len(order), 1)
    key = np.unique(parents[has].astype(np.int64) * width + rank[d[has]])
    counts = np.bincount(key // width, minlength=n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    values = domains.take(pa.array(order[key % width]))
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), values), ";")
    return pc.if_else(pa.array(counts == 0), pa.scalar(None, pa.string()), joined)


def _dict(arr: pa.Array) -> pa.Array:
    return pc.dictionary_encode(arr).cast(pa.dictionary(pa.int32(), pa.string()))


def make_messages(columns: dict[str, pa.Array | list], length: int | None = None) -> pa.RecordBatch:
    """Build a `messages` batch from whatever columns a format knows.

    - `p1_sender` / `p2_sender` are normalised here: `<>` becomes '' (the null sender), an
      empty or missing value becomes null (unknown), so pass `<>` for the null sender, never '';
      angle brackets and display names are removed. Normalising twice is harmless.
    - `null_sender` is derived from p1_sender.
    - `p1_domain`, `p2_domain`, `recipient_domains`, `recipient_count` are derived when absent.
    - Missing columns become null; low-cardinality columns are dictionary-encoded.
    """
    cols: dict[str, pa.Array] = {}
    for name, values in columns.items():
        if name not in MESSAGES.names:
            raise KeyError(f"make_messages: unknown column {name!r}")
        arr = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        cols[name] = arr
    if length is None:
        length = len(next(iter(cols.values()))) if cols else 0

    # Senders repeat (one application, many messages): normalise each distinct value once, and
    # derive the domain from the same distinct values (domain_of already normalises it, so a
    # derived domain is not normalised again; only a domain the caller passed is).
    derived = set()
    for sender, norm, dom in (
        ("p1_sender", envelope_sender, "p1_domain"), ("p2_sender", header_sender, "p2_domain")
    ):
        if sender not in cols:
            continue
        values, indices = _distinct(cols[sender])
        values = norm(values)
        cols[sender] = values.take(indices)
        if dom not in cols:
            cols[dom] = domain_of(values).take(indices)
            derived.add(dom)
    if "p1_sender" in cols:
        # Derived once here so the engine never has to read the high-cardinality p1_sender.
        cols["null_sender"] = pc.equal(pc.binary_length(cols["p1_sender"]), 0)
    for dom in ("p1_domain", "p2_domain"):
        if dom in cols and dom not in derived and not pa.types.is_dictionary(cols[dom].type):
            cols[dom] = normalise_domain(cols[dom])
    if "recipients" in cols:
        if "recipient_domains" not in cols:
            cols["recipient_domains"] = _recipient_domains(cols["recipients"])
        if "recipient_count" not in cols:
            cols["recipient_count"] = pc.list_value_length(cols["recipients"])
    if "message_id" in cols:
        mid = pc.utf8_trim_whitespace(cols["message_id"].cast(pa.string()))
        # Strip one pair of angle brackets with cheap kernels (a capturing regex costs more).
        bracketed = pc.and_(pc.starts_with(mid, "<"), pc.ends_with(mid, ">"))
        mid = pc.if_else(pc.fill_null(bracketed, False), pc.utf8_slice_codeunits(mid, 1, -1), mid)
        cols["message_id"] = pc.if_else(
            pc.equal(pc.utf8_length(mid), 0), pa.scalar(None, pa.string()), mid
        )

    arrays = []
    for f in MESSAGES:
        arr = cols.get(f.name)
        if arr is None:
            arrays.append(pa.nulls(length, f.type))
        elif f.type == arr.type:
            arrays.append(arr)
        elif pa.types.is_dictionary(f.type):
            arrays.append(_dict(arr.cast(pa.string())))
        else:
            arrays.append(arr.cast(f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=MESSAGES)


# A format module, as the registry sees it.
ReadFn = Callable[[list[Source], IngestContext], Iterator[pa.RecordBatch]]
