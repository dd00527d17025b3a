"""Vectorized normalisation of addresses, domains and timestamps shared by every ingestor.

All functions take and return pyarrow arrays; none loops over rows in Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .schema import TS


def _strings(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(pa.string())
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    return arr


def extract(s: pa.Array, pattern: str) -> pa.Array:
    """The named group of `pattern` (exactly one), null where the pattern does not match.

    (StructArray.field ignores the struct's own validity, so unmatched rows need masking.)"""
    if isinstance(s, pa.ChunkedArray):
        s = s.combine_chunks()
    m = pc.extract_regex(s, pattern)
    return pc.if_else(pc.is_valid(m), m.field(0), pa.scalar(None, m.type.field(0).type))


def per_distinct(arr: pa.Array | pa.ChunkedArray, fn) -> pa.Array:
    """fn (element-wise) applied to the distinct values of a string column only, broadcast back
    with one take: mail logs repeat senders and domains, so this saves most of the work."""
    arr = _strings(arr) if not pa.types.is_dictionary(arr.type) else arr
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    enc = arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr)
    return fn(enc.dictionary.cast(pa.string())).take(enc.indices)


def envelope_sender(arr: pa.Array) -> pa.Array:
    """MAIL FROM as logged -> P1: '<>' (or '<' '>' with spaces) becomes '' (the null sender),
    surrounding angle brackets are removed, an empty or missing value is null (unknown)."""
    s = pc.utf8_trim_whitespace(_strings(arr))
    s = pc.replace_substring_regex(s, r"^<\s*(.*?)\s*>$", r"\1")
    # An empty cell means "the log does not say"; only an explicit <> is the null sender.
    was_empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(_strings(arr))), 0)
    return pc.if_else(was_empty, pa.scalar(None, pa.string()), s)


def header_sender(arr: pa.Array) -> pa.Array:
    """From:/Sender: value -> P2 address. `"Name" <a@b>` gives a@b; `<>` or empty gives null."""
    s = pc.utf8_trim_whitespace(_strings(arr))
    bracketed = extract(s, r"<(?P<a>[^<>]*)>\s*$")
    s = pc.coalesce(bracketed, s)
    s = pc.utf8_trim_whitespace(s)
    return pc.if_else(pc.equal(pc.utf8_length(s), 0), pa.scalar(None, pa.string()), s)


def normalise_domain(arr: pa.Array) -> pa.Array:
    """Lower-case and drop a trailing dot; empty becomes null."""
    s = pc.utf8_lower(pc.utf8_trim_whitespace(_strings(arr)))
    s = pc.replace_substring_regex(s, r"\.+$", "")
    return pc.if_else(pc.equal(pc.utf8_length(s), 0), pa.scalar(None, pa.string()), s)


def domain_of(addresses: pa.Array) -> pa.Array:
    """Domain part of each address (after the last @), normalised; null without an @."""
    s = _strings(addresses)
    dom = extract(s, r"@(?P<d>[^@\s<>]+)>?\s*$")
    return normalise_domain(dom)


def list_domains_joined(recipients: pa.ListArray) -> pa.Array:
    """For a list<string> of addresses: the distinct domains of each row, sorted, joined by ';'.

    Null for a row with no recipient domain. Vectorized: flatten, sort (row, domain), drop
    adjacent duplicates, rebuild lists from counts.
    """
    if isinstance(recipients, pa.ChunkedArray):
        recipients = recipients.combine_chunks()
    n = len(recipients)
    if n == 0:
        return pa.array([], pa.string())
    parents = pc.list_parent_indices(recipients)
    doms = domain_of(pc.list_flatten(recipients))
    t = pa.table({"p": parents, "d": doms}).filter(pc.is_valid(doms))
    t = t.sort_by([("p", "ascending"), ("d", "ascending")])
    p = t.column("p").to_numpy()
    d = t.column("d").combine_chunks()
    if len(p):
        same_parent = np.concatenate([[False], p[1:] == p[:-1]])
        same_dom = np.concatenate(
            [[False], pc.equal(d[1:], d[:-1]).to_numpy(zero_copy_only=False)]
        )
        keep = ~(same_parent & same_dom)
        p = p[keep]
        d = d.filter(pa.array(keep))
    counts = np.bincount(p, minlength=n) if len(p) else np.zeros(n, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), d)
    joined = pc.binary_join(lists, ";")
    return pc.if_else(pc.equal(pa.array(counts), 0), pa.scalar(None, pa.string()), joined)


def split_list(arr: pa.Array, sep: str = ";") -> pa.ListArray:
    """'a;b; c' -> ['a','b','c'] (trimmed, empties removed); null stays null."""
    s = _strings(arr)
    parts = pc.split_pattern(s, sep)
    flat = pc.utf8_trim_whitespace(pc.list_flatten(parts))
    parents = pc.list_parent_indices(parts)
    keep = pc.greater(pc.utf8_length(flat), 0)
    flat = flat.filter(keep)
    parents = parents.filter(keep).to_numpy()
    counts = np.bincount(parents, minlength=len(s)) if len(parents) else np.zeros(len(s), int)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    out = pa.ListArray.from_arrays(pa.array(offsets), flat)
    missing = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(s)), 0), True)
    return pc.if_else(missing, pa.scalar(None, out.type), out)


_ISO = r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$"


def parse_iso_utc(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """ISO 8601 strings -> timestamp[us, UTC]. No offset means UTC; 7 fractional digits (.NET)
    are truncated to microseconds; a space may stand for the T.

    Returns (timestamps, bad) where `bad` is true for a non-empty value that is not ISO 8601;
    those timestamps are null so the caller can reject the line with a reason.
    """
    s = pc.utf8_trim_whitespace(_strings(arr))
    s = pc.replace_substring_regex(s, r"^(\d{4}-\d{2}-\d{2}) (\d)", r"\1T\2")
    s = pc.replace_substring_regex(s, r"(\.\d{6})\d+", r"\1")
    s = pc.replace_substring_regex(s, r"([+-]\d{2})(\d{2})$", r"\1:\2")
    empty = pc.fill_null(pc.equal(pc.utf8_length(s), 0), True)
    ok = pc.fill_null(pc.match_substring_regex(s, _ISO), False)
    bad = pc.and_(pc.invert(empty), pc.invert(ok))
    s = pc.if_else(ok, s, pa.scalar(None, pa.string()))
    date_only = pc.fill_null(pc.match_substring_regex(s, r"^\d{4}-\d{2}-\d{2}$"), False)
    s = pc.if_else(date_only, pc.binary_join_element_wise(s, "T00:00:00", ""), s)
    minutes_only = pc.fill_null(pc.match_substring_regex(s, r"T\d{2}:\d{2}($|Z|[+-])"), False)
    s = pc.if_else(minutes_only, pc.replace_substring_regex(s, r"(T\d{2}:\d{2})", r"\1:00"), s)
    has_zone = pc.fill_null(pc.match_substring_regex(s, r"(Z|[+-]\d{2}:\d{2})$"), True)
    s = pc.if_else(has_zone, s, pc.binary_join_element_wise(s, "Z", ""))
    try:
        ts = pc.cast(s, TS)
    except pa.ArrowInvalid:
        # A value the pattern let through but Arrow refuses (month 13, ...): find them one
        # kernel at a time via strptime with error_is_null, which never raises.
        ts = pc.strptime(
            pc.replace_substring_regex(s, r"(Z|[+-]\d{2}:\d{2})$", ""),
            format="%Y-%m-%dT%H:%M:%S",
            unit="us",
            error_is_null=True,
        )
        ts = pc.cast(ts, pa.timestamp("us")).cast(TS)
        bad = pc.or_(bad, pc.and_(pc.is_valid(s), pc.is_null(ts)))
    return ts, pc.fill_null(bad, False)
