"""Vectorized domain and IPv4 tests over arrays of distinct values (dictionaries).

Domains: "is d, or a parent of d at a label boundary, in this set" is answered by stripping one
leading label at a time and probing the set with `index_in`: as many kernel calls as the deepest
domain has labels, whatever the size of the set.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _idx(arr: pa.Array) -> np.ndarray:
    return pc.fill_null(arr, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def longest_suffix_match(domains: pa.Array, table: pa.Array, min_strip: int = 0) -> np.ndarray:
    """For each domain, the index in `table` of the longest entry that equals it (when
    min_strip == 0) or is a parent of it at a label boundary; -1 where none.

    min_strip=1 asks for parents only (the subdomain rule of MatchSubDomains).
    """
    n = len(domains)
    out = np.full(n, -1, dtype=np.int64)
    if n == 0 or len(table) == 0:
        return out
    cur = domains
    depth = 0
    while True:
        if depth >= min_strip:
            hit = _idx(pc.index_in(cur, value_set=table))
            take = (out < 0) & (hit >= 0)
            out[take] = hit[take]
        has_dot = pc.fill_null(pc.match_substring(cur, "."), False)
        if not pc.any(has_dot).as_py():
            return out
        cur = pc.if_else(has_dot, pc.replace_substring_regex(cur, r"^[^.]*\.", ""), pa.scalar(None, pa.string()))
        depth += 1


def ipv4_to_int(ips: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dotted-quad strings -> (uint32 as int64, is_ipv4, is_ipv6). Not an IP -> neither."""
    s = pc.utf8_trim_whitespace(ips.cast(pa.string()))
    # "[203.0.113.5]" and "203.0.113.5:25" occur in logs; keep the address only.
    s = pc.replace_substring_regex(s, r"^\[?([0-9.]+)\]?(:\d+)?$", r"\1")
    ok = pc.fill_null(
        pc.match_substring_regex(s, r"^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$"),
        False,
    )
    v6 = pc.fill_null(
        pc.and_(pc.match_substring(s, ":"), pc.match_substring_regex(s, r"^\[?[0-9A-Fa-f:.]+(%\w+)?\]?$")),
        False,
    )
    good = pc.if_else(ok, s, pa.scalar("0.0.0.0"))
    parts = pc.split_pattern(good, ".")
    flat = pc.list_flatten(parts).cast(pa.int64()).to_numpy().reshape(-1, 4)
    value = (flat[:, 0] << 24) | (flat[:, 1] << 16) | (flat[:, 2] << 8) | flat[:, 3]
    return value, ok.to_numpy(zero_copy_only=False), v6.to_numpy(zero_copy_only=False)


def first_range_match(values: np.ndarray, valid: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Index of the first range (lo[i] <= v <= hi[i]) containing each value, -1 where none."""
    out = np.full(len(values), -1, dtype=np.int64)
    for i in range(len(lo) - 1, -1, -1):  # few ranges: loop over ranges, never over values
        inside = valid & (values >= lo[i]) & (values <= hi[i])
        out[inside] = i
    return out


def matches_host_patterns(hosts: pa.Array, patterns: tuple[str, ...]) -> np.ndarray:
    """Host names against globs like '*.mail.protection.outlook.com' (suffix) or exact names."""
    s = pc.utf8_lower(pc.utf8_trim_whitespace(hosts.cast(pa.string())))
    s = pc.replace_substring_regex(s, r"(\[.*|:\d+)$", "")  # host[ip]:port -> host
    s = pc.replace_substring_regex(s, r"\.+$", "")
    out = np.zeros(len(hosts), dtype=bool)
    for pat in patterns:
        pat = pat.lower().rstrip(".")
        if pat.startswith("*."):
            m = pc.or_(pc.ends_with(s, pat[1:]), pc.equal(s, pat[2:]))
        else:
            m = pc.equal(s, pat)
        out |= pc.fill_null(m, False).to_numpy(zero_copy_only=False)
    return out
