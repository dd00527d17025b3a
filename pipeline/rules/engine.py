"""The one vectorized rule engine: messages batch in, verdicts batch out, for any rule pack.

How it stays fast (mail logs repeat the same few domains, IPs, hosts and certificates):
1. every input column is dictionary-encoded; each condition is computed once per distinct
   value per run (`_Vocabulary`: values only append, so Parquet row groups with dictionaries
   of their own share one set of facts), never per message;
2. the row-wise tuple of dictionary codes is packed into one int64 key per row and hashed once
   (`_factorize`) into "combos", distinct combinations of the inputs that matter: typically
   thousands for millions of messages;
3. conditions, verdicts, impact, scenario and reason are computed with Kleene kernels once per
   combo per run (`_judge`; `_combo_ids` remembers judged combos across batches), and
   broadcast back to the rows with one integer gather per column (`_broadcast`).

Row-sized arrays are made in Arrow's memory pool, which keeps freed pages for the next batch
(see `_view`). No Python code runs per message; Python loops only over config items
(connectors, hosts) and distinct warning texts.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..config import Connector, TenantConfig
from ..errors import ConfigError
from ..schema import DICT, IMPACTS, MESSAGES, VERDICT_VALUES, VERDICTS
from .catalog import ServiceMatcher
from .domains import first_range_match, ipv4_to_int, longest_suffix_match, matches_host_patterns
from .packs import Pack, evaluate_expression, load_pack

_NULL_STR = pa.scalar(None, pa.string())

# The messages columns the engine reads; everything else is passed through untouched.
INPUT_COLUMNS = (
    "null_sender", "p1_domain", "p2_domain", "relay_ip", "tls_cert", "host", "connector",
    "relay_host", "recipient_domains", "logged_by_exo", "is_ndr",
)

# The combo key: correlated columns side by side (a host has one IP and certificate). The
# string columns are coded by run-wide vocabularies; null_sender, logged_by_exo and is_ndr
# are 0 false / 1 true / 3 null; rcpt_class is recipient_domains reduced to what the rules
# use (bit 0: a recipient in an accepted domain, bit 1: one outside).
_KEY = (
    "host", "relay_ip", "tls_cert", "connector", "relay_host", "logged_by_exo",
    "p1_domain", "null_sender", "p2_domain", "rcpt_class", "is_ndr",
)
# Verdict columns that carry free text, stored per combo as codes into run-wide vocabularies.
_STRING_OUTPUTS = ("matched_connector", "source_ip", "scenario", "third_party", "reason", "remedy")
_WARNING_KINDS = ("connector", "ip", "ipv6", "host", "disabled", "shared_ip")


# ------------------------------------------------------------------------------------------
# The tenant, prepared once for vectorized look-ups


@dataclass
class RuleContext:
    config: TenantConfig
    pack: Pack
    accepted: pa.Array  # every accepted domain
    accepted_msd: pa.Array  # those with MatchSubDomains
    counted: tuple[Connector, ...]  # connectors of the pack's types, enabled
    ip_lo: np.ndarray
    ip_hi: np.ndarray
    ip_owner: np.ndarray  # index into counted
    disabled_lo: np.ndarray  # ranges of disabled OnPremises connectors (hygiene warning)
    disabled_hi: np.ndarray
    services: ServiceMatcher
    warnings: Counter = field(default_factory=Counter)

    @classmethod
    def build(cls, config: TenantConfig, pack: Pack | str | None = None) -> RuleContext:
        pack = load_pack(pack or config.rules.pack) if not isinstance(pack, Pack) else pack
        counted = tuple(c for c in config.connectors if c.enabled and c.type in pack.connector_types)
        if pack.requires_connector and not any(c.type == "OnPremises" for c in counted):
            raise ConfigError(
                f"{config.path}: no enabled OnPremises inbound connector, so the relay rules of "
                f"{pack.name} do not apply to this tenant (direct-send-2025 still does: --pack direct-send-2025)"
            )
        lo, hi, owner = [], [], []
        for i, c in enumerate(counted):
            for r in c.sender_ip_addresses:
                lo.append(r.lo)
                hi.append(r.hi)
                owner.append(i)
        disabled = [
            r for c in config.connectors if c.type == "OnPremises" and not c.enabled for r in c.sender_ip_addresses
        ]
        return cls(
            config=config,
            pack=pack,
            accepted=pa.array([d.name for d in config.accepted_domains], pa.string()),
            accepted_msd=pa.array([d.name for d in config.accepted_domains if d.match_subdomains], pa.string()),
            counted=counted,
            ip_lo=np.array(lo, dtype=np.int64),
            ip_hi=np.array(hi, dtype=np.int64),
            ip_owner=np.array(owner, dtype=np.int64),
            disabled_lo=np.array([r.lo for r in disabled], dtype=np.int64),
            disabled_hi=np.array([r.hi for r in disabled], dtype=np.int64),
            services=ServiceMatcher.build(config.third_parties),
        )

    # --- conditions on arrays of distinct values ------------------------------------------

    def accepted_domain(self, domains: pa.Array) -> np.ndarray:
        """acc(d): d is accepted, or a subdomain of an accepted domain with MatchSubDomains."""
        exact = pc.fill_null(pc.is_in(domains, value_set=self.accepted), False).to_numpy(zero_copy_only=False)
        sub = longest_suffix_match(domains, self.accepted_msd, min_strip=1) >= 0
        return exact | sub

    def parent_accepted(self, domains: pa.Array) -> np.ndarray:
        """d is a subdomain of some accepted domain (whatever its MatchSubDomains)."""
        return longest_suffix_match(domains, self.accepted, min_strip=1) >= 0

    def source_ip(self, ips: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per distinct IP: (state 0 unknown / 1 IPv4 / 2 IPv6, first counted connector or -1,
        falls in a disabled OnPremises connector's range)."""
        value, v4, v6 = ipv4_to_int(ips)
        state = np.where(v4, 1, np.where(v6, 2, 0))
        owner_range = first_range_match(value, v4, self.ip_lo, self.ip_hi)
        conn = np.where(owner_range >= 0, self.ip_owner[np.maximum(owner_range, 0)] if len(self.ip_owner) else -1, -1)
        disabled = first_range_match(value, v4, self.disabled_lo, self.disabled_hi) >= 0
        return state, conn, disabled

    def certificates(self, certs: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Per distinct ';'-joined certificate name list: (cert_accepted as 0/1/2=unknown,
        first counted connector whose TlsSenderCertificateName matches a name, or -1)."""
        n = len(certs)
        lists = pc.split_pattern(pc.utf8_lower(certs.cast(pa.string())), ";")
        if self.config.rules.cert_names == "cn":
            lists = pc.list_slice(lists, 0, 1)
        names = pc.utf8_trim_whitespace(pc.list_flatten(lists))
        parent = pc.list_parent_indices(lists).to_numpy()
        keep = pc.greater(pc.utf8_length(names), 0).to_numpy(zero_copy_only=False)
        names = names.filter(pa.array(keep))
        parent = parent[keep]
        bare = pc.replace_substring_regex(pc.replace_substring_regex(names, r"^\*\.", ""), r"\.+$", "")
        acc = self.accepted_domain(bare)
        sub = self.parent_accepted(bare) & ~acc
        any_acc = np.bincount(parent[acc], minlength=n) > 0
        any_sub = np.bincount(parent[sub], minlength=n) > 0
        policy = self.config.rules.cert_parent_domain
        state = np.where(any_acc, 1, 0)
        if policy == "accept":
            state = np.where(any_sub, 1, state)
        elif policy == "unknown":
            state = np.where(~any_acc & any_sub, 2, state)
        conn = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        for i in range(len(self.counted) - 1, -1, -1):
            pattern = self.counted[i].tls_sender_certificate_name
            if not pattern:
                continue
            if pattern.startswith("*."):  # covers the domain and every depth below it
                hit = pc.or_(pc.equal(bare, pattern[2:]), pc.ends_with(bare, pattern[1:]))
                hit = pc.or_(hit, pc.equal(names, pattern))
            else:
                hit = pc.equal(names, pattern)
            hit = pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
            np.minimum.at(conn, parent[hit], i)
        conn = np.where(conn == np.iinfo(np.int64).max, -1, conn)
        return state, conn

    def wildcard_connector_cert(self, pattern: str) -> int:
        """cert_accepted when a log names a certificate-only connector `*.d` but not the name
        itself (relay-rules.md): true if every name under d is accepted, else unknown."""
        d = pattern[2:]
        if self.accepted_domain(pa.array(["x." + d]))[0]:
            return 1
        if self.config.rules.cert_parent_domain == "accept" and (
            self.accepted_domain(pa.array([d]))[0] or self.parent_accepted(pa.array([d]))[0]
        ):
            return 1
        return 2


# ------------------------------------------------------------------------------------------
# Per-column facts: one entry per dictionary value, plus a last slot for null


def _dictionary(col: pa.Array | pa.ChunkedArray, scratch: np.ndarray | None = None) -> tuple[np.ndarray | None, pa.Array]:
    """(codes with null -> len(dictionary), dictionary) for any string-like column; codes are
    None when every row is null (a constant: it cannot split combos). Null slots are filled
    in `scratch` (int32, one per row) when given."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col.cast(pa.string()))
    dictionary = col.dictionary.cast(pa.string())
    if col.null_count == len(col):
        return None, dictionary
    indices = col.indices
    if indices.type != pa.int32():
        indices = indices.cast(pa.int32())
    codes = _view(indices)
    if indices.null_count:
        # Nulls get the extra slot len(dictionary): codes = null_slot + valid * (codes -
        # null_slot), in place, so whatever an index buffer holds under a null is multiplied
        # away (faster than pc.fill_null or np.where).
        null_slot = np.int32(len(dictionary))
        filled = scratch if scratch is not None else np.empty(len(codes), dtype=np.int32)
        np.subtract(codes, null_slot, out=filled)
        np.multiply(filled, _bits(indices, 0), out=filled, casting="unsafe")
        np.add(filled, null_slot, out=filled)
        codes = filled
    return codes, dictionary


class _Scratch(threading.local):
    """Working arrays of one engine, per thread, reused batch after batch (contents
    undefined): row-sized temporaries that never leave a batch cost no fresh pages. Owned by
    the engine, so they go when it goes."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, n: int, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        size = n * dtype.itemsize
        buf = self.buffers.get(name)
        if buf is None or len(buf) < size:
            buf = self.buffers[name] = np.empty(max(size, 8), dtype=np.uint8)
        return buf[:size].view(dtype)


def _pooled(n: int, dtype) -> np.ndarray:
    """An uninitialised numpy array in Arrow's memory pool (see _view)."""
    dtype = np.dtype(dtype)
    return np.frombuffer(pa.allocate_buffer(n * dtype.itemsize), dtype=dtype)


def _view(arr: pa.Array) -> np.ndarray:
    """A fixed-width Arrow array without nulls as numpy, zero copy. Row-sized arrays are made
    by Arrow kernels and viewed, not made by numpy: Arrow's memory pool keeps freed pages for
    the next batch, where fresh numpy arrays would cost a page fault per 4 KiB."""
    return np.frombuffer(arr.buffers()[1], dtype=arr.type.to_pandas_dtype(), count=arr.offset + len(arr))[arr.offset :]


def _bits(arr: pa.Array, buffer: int) -> np.ndarray:
    """A bitmap buffer of an array (0 validity, 1 boolean values) as uint8 0/1 per element."""
    bitmap = arr.buffers()[buffer]
    if bitmap is None:
        return np.ones(len(arr), dtype=np.uint8)
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), count=arr.offset + len(arr), bitorder="little")
    return bits[arr.offset :]


def _with_null(values: np.ndarray, null_value) -> np.ndarray:
    return np.append(values, np.array([null_value], dtype=values.dtype))


class _Vocabulary:
    """One input column's distinct values seen in this run, with their facts, in first-seen
    order. Values only ever append, so a global code means the same value for the whole run:
    facts are computed once per distinct value per run, whatever dictionaries batches carry
    (Parquet gives every row group its own)."""

    def __init__(self, compute) -> None:
        self.compute = compute
        self.values = pa.array([], pa.string())
        self.facts: dict | None = None

    def global_codes(self, dictionary: pa.Array) -> np.ndarray:
        """Global code of each value of a batch's dictionary, plus a last slot (-1) for null."""
        dictionary = dictionary.cast(pa.string())
        pos = pc.index_in(dictionary, value_set=self.values)
        if pos.null_count or self.facts is None:
            self._extend(pc.unique(dictionary.filter(pc.is_null(pos))))
            pos = pc.index_in(dictionary, value_set=self.values)
        return np.append(pos.to_numpy(zero_copy_only=False).astype(np.int32), np.int32(-1))

    def _extend(self, new: pa.Array) -> None:
        facts = self.compute(new)
        if self.facts is not None:
            n_old = len(self.values)
            # numpy facts end with the null slot, which the new block brings along again
            facts = {
                k: np.concatenate([old[:n_old], facts[k]]) if isinstance(old, np.ndarray)
                else pa.concat_arrays([old.slice(0, n_old), facts[k].cast(old.type)])
                for k, old in self.facts.items()
            }
        self.facts = facts
        self.values = facts["values"]


class _Interner:
    """Stable dense ids for int64 keys across batches (a hash index that only grows)."""

    def __init__(self) -> None:
        self.index = pd.Index(np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.index)

    def ids(self, keys: np.ndarray) -> np.ndarray:
        pos = self.index.get_indexer(keys)
        missing = pos < 0
        if missing.any():
            self.index = self.index.append(pd.Index(pd.unique(keys[missing])))
            pos[missing] = self.index.get_indexer(keys[missing])
        return pos


class _Strings:
    """A run-wide vocabulary of output strings (reasons, remedies, ...): per-combo results are
    stored as int32 codes into it, -1 for null."""

    def __init__(self) -> None:
        self.values = pa.array([], pa.string())

    def codes(self, strings: pa.Array) -> np.ndarray:
        strings = strings.cast(pa.string())
        pos = pc.index_in(strings, value_set=self.values)
        unseen = pc.and_(pc.is_null(pos), pc.is_valid(strings))
        if pc.any(unseen).as_py():
            self.values = pa.concat_arrays([self.values, pc.unique(strings.filter(unseen))])
            pos = pc.index_in(strings, value_set=self.values)
        return pc.fill_null(pos, -1).to_numpy(zero_copy_only=False).astype(np.int32)


# ------------------------------------------------------------------------------------------
# The engine


class Engine:
    """Evaluates batches of `messages` into `verdicts` for one tenant and pack."""

    def __init__(self, config: TenantConfig, pack: Pack | str | None = None):
        self.rc = RuleContext.build(config, pack)
        self.warnings: Counter = Counter()
        self._host_lookup = {h.name.lower(): h for h in config.hosts}
        self._named = {c.name.lower(): c for c in config.connectors}
        # Run-wide state, shared by the thread pool's batches under one lock; only work sized
        # by distinct values or combos happens under it, never work sized by rows.
        self._lock = threading.Lock()
        facts = {
            "p1_domain": self._domain_facts, "p2_domain": self._domain_facts, "relay_ip": self._ip_facts,
            "tls_cert": self._cert_facts, "host": self._host_facts, "connector": self._connector_facts,
            "relay_host": self._relay_host_facts, "recipient_domains": self._recipient_facts,
        }
        self._vocab = {col: _Vocabulary(fn) for col, fn in facts.items()}
        self._combos = _Interner()  # combo key -> combo id, in judging order
        self._folds: list[_Interner] = []  # shortens keys wider than 62 bits (see _combo_keys)
        self._bits = dict.fromkeys(_KEY, 0)
        self._combo_codes = {k: np.zeros(0, dtype=np.int32) for k in _KEY}
        self._results: dict[str, np.ndarray] = {}
        self._strings = {name: _Strings() for name in _STRING_OUTPUTS}
        self._warn_ids = np.zeros((len(_WARNING_KINDS), 0), dtype=np.int32)
        self._labels: list[str] = []
        self._label_ids: dict[str, int] = {}
        self._zero_indices = pa.array(np.zeros(0, dtype=np.int32))
        self._scratch = _Scratch()

    # --- facts per column ---------------------------------------------------------------

    def _domain_facts(self, dictionary: pa.Array) -> dict:
        acc = self.rc.accepted_domain(dictionary)
        service = self.rc.services.match(dictionary)
        return {"acc": _with_null(acc, False), "service": _with_null(service, -1), "values": dictionary}

    def _ip_facts(self, dictionary: pa.Array) -> dict:
        state, conn, disabled = self.rc.source_ip(dictionary)
        return {
            "state": _with_null(state, 0),
            "conn": _with_null(conn, -1),
            "disabled": _with_null(disabled, False),
            "values": dictionary,
        }

    def _cert_facts(self, dictionary: pa.Array) -> dict:
        state, conn = self.rc.certificates(dictionary)
        return {"state": _with_null(state, 0), "conn": _with_null(conn, -1), "values": dictionary}

    def _host_facts(self, dictionary: pa.Array) -> dict:
        """Configured egress IP and certificate of each host name (config-sized lookups)."""
        hosts = [self._host_lookup.get(str(h).lower()) for h in dictionary.to_pylist()]
        known = np.array([h is not None for h in hosts] + [False])
        egress = pa.array([h.egress_ip if h else None for h in hosts], pa.string())
        certs = pa.array([";".join(h.certificate) if h and h.certificate else None for h in hosts], pa.string())
        ip_state, ip_conn, ip_disabled = self.rc.source_ip(egress)
        ip_state = np.where(pc.is_null(egress).to_numpy(zero_copy_only=False), 0, ip_state)
        cert_state, cert_conn = self.rc.certificates(pc.fill_null(certs, ""))
        has_cert = pc.is_valid(certs).to_numpy(zero_copy_only=False)
        return {
            "known": known,
            "ip_state": _with_null(ip_state, 0),
            "ip_conn": _with_null(ip_conn, -1),
            "ip_disabled": _with_null(ip_disabled, False),
            "egress": egress,
            "has_cert": _with_null(has_cert, False),
            "cert_state": _with_null(cert_state, 0),
            "cert_conn": _with_null(cert_conn, -1),
            "cert_text": certs,
            "values": dictionary,
        }

    def _connector_facts(self, dictionary: pa.Array) -> dict:
        """A connector named by an Exchange Online log: 1 counted, 2 known but not counted
        (Partner or disabled), 3 unknown to the config (a match, with a warning)."""
        counted_names = {c.name.lower(): i for i, c in enumerate(self.rc.counted)}
        status, conn, cert_state, cert_text = [], [], [], []
        for name in dictionary.to_pylist():
            low = str(name).lower()
            c = self._named.get(low)
            if low in counted_names:
                status.append(1)
                conn.append(counted_names[low])
            elif c is not None:
                status.append(2)
                conn.append(-1)
            else:
                status.append(3)
                conn.append(-1)
            # A certificate-only connector tells which certificate was presented.
            if c is not None and low in counted_names and c.certificate_only:
                pattern = c.tls_sender_certificate_name
                if pattern.startswith("*."):
                    cert_state.append(self.rc.wildcard_connector_cert(pattern))
                    cert_text.append(pattern)
                else:
                    cert_state.append(int(self.rc.certificates(pa.array([pattern]))[0][0]))
                    cert_text.append(pattern)
            else:
                cert_state.append(-1)  # the connector says nothing about a certificate
                cert_text.append(None)
        return {
            "status": _with_null(np.array(status, dtype=np.int64), 0),
            "conn": _with_null(np.array(conn, dtype=np.int64), -1),
            "cert_state": _with_null(np.array(cert_state, dtype=np.int64), -1),
            "cert_text": pa.array(cert_text + [None], pa.string()),
            "values": dictionary,
        }

    def _relay_host_facts(self, dictionary: pa.Array) -> dict:
        return {"to_exo": _with_null(matches_host_patterns(dictionary, self.rc.config.relay_targets), True), "values": dictionary}

    def _recipient_facts(self, dictionary: pa.Array) -> dict:
        lists = pc.split_pattern(dictionary, ";")
        flat = pc.list_flatten(lists)
        parent = pc.list_parent_indices(lists).to_numpy()
        acc = self.rc.accepted_domain(flat)
        n = len(dictionary)
        internal = np.bincount(parent[acc], minlength=n) > 0
        external = np.bincount(parent[~acc], minlength=n) > 0
        # Unknown recipients count as outside (relay-rules.md, Scope).
        return {"internal": _with_null(internal, False), "external": _with_null(external, True), "values": dictionary}

    # --- one batch --------------------------------------------------------------------------

    def evaluate_batch(self, batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
        """A messages batch -> the verdicts batch (every messages column passed through)."""
        if isinstance(batch, pa.Table):
            batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else pa.RecordBatch.from_pylist([], MESSAGES)
        n = batch.num_rows
        arrays = []
        for fld in MESSAGES:
            arr = batch.column(fld.name) if fld.name in batch.schema.names else pa.nulls(n, fld.type)
            arrays.append(arr if arr.type == fld.type else arr.cast(fld.type))
        verdicts = self.verdict_columns(batch)
        arrays.extend(verdicts[f.name] for f in VERDICTS if f.name not in MESSAGES.names)
        return pa.RecordBatch.from_arrays(arrays, schema=VERDICTS)

    def verdict_columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """The verdict columns for a batch that holds (some of) INPUT_COLUMNS."""
        n = batch.num_rows
        local, sizes, dictionaries, constant = self._local_codes(batch)
        with self._lock:
            to_global = {name: v.global_codes(dictionaries[name]) for name, v in self._vocab.items()}
            rcpt = self._vocab["recipient_domains"].facts
        # Only whether recipients are inside or outside the tenant matters to the rules, so
        # recipient lists are reduced to that before the rows are factorized (fewer combos).
        rcpt_class = (rcpt["internal"].astype(np.int8) | (rcpt["external"].astype(np.int8) << 1))[to_global["recipient_domains"]]
        codes = local["recipient_domains"]
        local["rcpt_class"] = None if codes is None else _gather(rcpt_class, codes, self._scratch.array("rcpt_class", n, np.int8))
        sizes["rcpt_class"], constant["rcpt_class"] = 4, int(rcpt_class[-1])

        inverse, per_id, m = _factorize([local[k] for k in _KEY], [sizes[k] for k in _KEY], n, self._scratch)
        weights = np.bincount(inverse, minlength=m)
        combo = {}
        for k, codes in zip(_KEY, per_id, strict=True):
            codes = np.full(m, constant[k], dtype=np.int32) if codes is None else codes
            combo[k] = to_global[k][codes] if k in to_global else codes.astype(np.int32)

        # Combo-sized work: judge only the combos no earlier batch had.
        with self._lock:
            ids = self._combo_ids(combo)
            self._count_warnings(ids, weights)
            per_combo = {name: values[ids] for name, values in self._results.items()}
            vocab = {name: s.values for name, s in self._strings.items()}
        rule_pack = pa.DictionaryArray.from_arrays(self._zeros(n), pa.array([self.rc.pack.name]))
        return _broadcast(per_combo, vocab, inverse, rule_pack, self._scratch)

    def _local_codes(self, batch: pa.RecordBatch) -> tuple[dict, dict, dict, dict]:
        """Row-sized work: each input column's codes as the batch's own dictionary numbers them
        (None for a column null on every row), with the number of codes, the dictionaries and
        the code a None column stands for."""
        n = batch.num_rows
        cols = {name: batch.column(name) if name in batch.schema.names else pa.nulls(n, MESSAGES.field(name).type) for name in INPUT_COLUMNS}
        local, sizes, dictionaries, constant = {}, {}, {}, {}
        for name in self._vocab:
            local[name], dictionaries[name] = _dictionary(cols[name], self._scratch.array(f"codes:{name}", n, np.int32))
            sizes[name] = len(dictionaries[name]) + 1
            constant[name] = len(dictionaries[name])
        null_sender = cols["null_sender"]
        if null_sender.null_count == n and "p1_sender" in batch.schema.names:
            # a table built by hand, without the derived column: derive it here
            p1 = batch.column("p1_sender")
            null_sender = pc.equal(pc.binary_length(p1.cast(pa.string()) if pa.types.is_dictionary(p1.type) else p1), 0)
        for name, col in (("null_sender", null_sender), ("logged_by_exo", cols["logged_by_exo"]), ("is_ndr", cols["is_ndr"])):
            local[name], sizes[name], constant[name] = _bool_code(col), 4, 3
        return local, sizes, dictionaries, constant

    def _zeros(self, n: int) -> pa.Array:
        """n int32 zeros, shared by every batch (Arrow arrays are immutable)."""
        if len(self._zero_indices) < n:
            self._zero_indices = pa.array(np.zeros(n, dtype=np.int32))
        return self._zero_indices.slice(0, n)

    def _combo_ids(self, combo: dict[str, np.ndarray]) -> np.ndarray:
        """Run-wide ids of a batch's combos (global codes per _KEY column); new ones are judged
        and their results appended."""
        keys = self._combo_keys(combo)
        known = len(self._combos)
        ids = self._combos.ids(keys)
        fresh = ids >= known
        if fresh.any():
            # one batch position per new id, in id order
            _, first = np.unique(ids[fresh], return_index=True)
            at = np.flatnonzero(fresh)[first]
            new = {k: combo[k][at] for k in _KEY}
            for k in _KEY:
                self._combo_codes[k] = np.concatenate([self._combo_codes[k], new[k]])
            self._store(self._judge(self._fact_codes(new), {k: v.facts for k, v in self._vocab.items()}))
        return ids

    def _combo_keys(self, combo: dict[str, np.ndarray]) -> np.ndarray:
        """One int64 per combo: the global codes (+1, so null is 0) packed with a fixed bit
        width per column. A vocabulary that outgrows its width widens it and re-keys the
        stored combos (rare: widths double). Keys that would pass 62 bits are folded through
        an interner, so any number of distinct values fits."""
        need = {k: (len(self._vocab[k].values) if k in self._vocab else 4).bit_length() for k in _KEY}
        if any(need[k] > self._bits[k] for k in _KEY):
            self._bits = {k: max(need[k], self._bits[k]) for k in _KEY}
            self._folds = []
            self._combos = _Interner()
            self._combos.ids(self._pack(self._combo_codes))  # same order, so ids are unchanged
        return self._pack(combo)

    def _pack(self, codes: dict[str, np.ndarray]) -> np.ndarray:
        key = np.zeros(len(codes[_KEY[0]]), dtype=np.int64)
        used, fold = 0, 0
        for k in _KEY:
            if used + self._bits[k] > 62:
                if fold == len(self._folds):
                    self._folds.append(_Interner())
                key = self._folds[fold].ids(key).astype(np.int64)
                used, fold = 32, fold + 1
            key = (key << self._bits[k]) | (codes[k].astype(np.int64) + 1)
            used += self._bits[k]
        return key

    def _fact_codes(self, combo: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Global codes -> indices into the facts arrays, whose null slot is the last one."""
        return {
            k: np.where(v < 0, len(self._vocab[k].values), v) if k in self._vocab else v for k, v in combo.items()
        }

    def _store(self, out: dict) -> None:
        """Append newly judged combos' results: strings as codes into run-wide vocabularies."""
        self._warn_ids = np.concatenate([self._warn_ids, out.pop("warnings")], axis=1)
        for name, values in out.items():
            codes = self._strings[name].codes(values) if name in self._strings else np.asarray(values, dtype=np.int8)
            self._results[name] = np.concatenate([self._results[name], codes]) if name in self._results else codes

    def _count_warnings(self, ids: np.ndarray, weights: np.ndarray) -> None:
        """Add a batch's messages to the warning counts (relay-rules.md); Python runs once
        per distinct warning text, never per message or per combo."""
        for row in self._warn_ids[:, ids]:
            hit = row >= 0
            if not hit.any():
                continue
            totals = np.bincount(row[hit], weights=weights[hit])
            for label in np.flatnonzero(totals):
                self.warnings[self._labels[label]] += int(totals[label])

    # --- per combo ------------------------------------------------------------------------

    def _judge(self, c: dict[str, np.ndarray], f: dict) -> dict[str, pa.Array | np.ndarray]:
        rc, cfg = self.rc, self.rc.config
        m = len(c["host"])
        p1d, p2d, ipf, cf, hf, nf = (f[k] for k in ("p1_domain", "p2_domain", "relay_ip", "tls_cert", "host", "connector"))

        # Source IP: the log's relay_ip, else the host's configured egress IP.
        has_relay_ip = c["relay_ip"] < len(ipf["values"])
        ip_state = np.where(has_relay_ip, ipf["state"][c["relay_ip"]], hf["ip_state"][c["host"]])
        ip_conn = np.where(has_relay_ip, ipf["conn"][c["relay_ip"]], hf["ip_conn"][c["host"]])
        ip_disabled = np.where(has_relay_ip, ipf["disabled"][c["relay_ip"]], hf["ip_disabled"][c["host"]])
        ip_text = pc.if_else(
            pa.array(has_relay_ip), _take_str(ipf["values"], c["relay_ip"]), _take_str(hf["egress"], c["host"])
        )

        # Certificate: the log's names, else a certificate-only connector the log names, else
        # the host's configuration, else rules.unknown_certificate decides.
        has_log_cert = c["tls_cert"] < len(cf["values"])
        named_cert = nf["cert_state"][c["connector"]]
        host_known = hf["known"][c["host"]]
        policy_unknown = cfg.rules.unknown_certificate == "unknown"
        cert_source = np.select(
            [has_log_cert, named_cert >= 0, host_known],
            [1, 2, 3],
            default=np.where(policy_unknown, 5, 4),
        )  # 1 log, 2 connector, 3 host config, 4 assumed none, 5 unknown
        cert_state = np.select(
            [cert_source == 1, cert_source == 2, cert_source == 3, cert_source == 5],
            [cf["state"][c["tls_cert"]], named_cert, hf["cert_state"][c["host"]], 2],
            default=0,
        )
        cert_conn = np.select(
            [cert_source == 1, cert_source == 3],
            [cf["conn"][c["tls_cert"]], hf["cert_conn"][c["host"]]],
            default=-1,
        )
        cert_text = pc.if_else(
            pa.array(cert_source == 1),
            _take_str(cf["values"], c["tls_cert"]),
            pc.if_else(pa.array(cert_source == 2), _take_str(nf["cert_text"], c["connector"]), _take_str(hf["cert_text"], c["host"])),
        )
        cert_present = (cert_source <= 2) | ((cert_source == 3) & hf["has_cert"][c["host"]])

        # connector_match: a connector named by the log decides; else IP or certificate.
        named_status = nf["status"][c["connector"]]
        by_ip = ip_conn >= 0
        by_cert = cert_conn >= 0
        # An unrecorded certificate only leaves the match open if some connector matches by name.
        cert_unknown = (cert_source == 5) & any(x.tls_sender_certificate_name for x in rc.counted)
        # An Exchange Online log row with no client IP and no connector is mail that started in
        # the cloud (message trace leaves FromIP blank for it): it used no inbound connector.
        cloud_origin = (c["logged_by_exo"] == 1) & ~has_relay_ip & (named_status == 0)
        conn_match = np.select(
            [named_status == 1, named_status == 3, named_status == 2, by_ip | by_cert, cloud_origin,
             (ip_state == 0) | cert_unknown],
            [1, 1, 0, 1, 0, 2],
            default=0,
        )
        via = np.select(
            [named_status > 0, by_ip, by_cert], [3, 1, 2], default=0
        )  # 0 none, 1 ip, 2 certificate, 3 named by the log
        conn_idx = np.where(by_ip, ip_conn, cert_conn)
        counted_names = pa.array([x.name for x in rc.counted] + [None], pa.string())
        matched_name = pc.if_else(
            pa.array(named_status > 0),
            _take_str(nf["values"], c["connector"]),
            counted_names.take(pa.array(np.where(conn_idx >= 0, conn_idx, len(rc.counted)))),
        )
        matched_name = pc.if_else(pa.array(conn_match == 1), matched_name, _NULL_STR)

        # Senders.
        kind = _p1_kind(c["null_sender"], c["p1_domain"], len(p1d["values"]))
        p1_acc = np.where(kind == 2, p1d["acc"][c["p1_domain"]], False).astype(np.int8)
        p1_acc = np.where(kind == 0, 2, p1_acc)
        p2_known = c["p2_domain"] < len(p2d["values"])
        p2_acc = np.where(p2_known, p2d["acc"][c["p2_domain"]].astype(np.int8), 2)
        service = np.where(kind == 2, p1d["service"][c["p1_domain"]], -1)

        cond = {
            "connector_match": _tri(conn_match),
            "p1_accepted": _tri(p1_acc),
            "p2_accepted": _tri(p2_acc),
            "cert_accepted": _tri(cert_state),
            "p1_null": pa.array(kind == 1),
            "third_party": pa.array(service >= 0),
            "to_exo": pa.array(f["relay_host"]["to_exo"][c["relay_host"]]),
            "has_external_rcpt": pa.array((c["rcpt_class"] & 2) > 0),
            "has_internal_rcpt": pa.array((c["rcpt_class"] & 1) > 0),
            "logged_by_exo": pa.array(c["logged_by_exo"] == 1),
            "is_ndr": _tri(np.where(c["is_ndr"] == 3, 2, c["is_ndr"])),
        }
        pack = rc.pack
        in_scope = pc.fill_null(evaluate_expression(pack.scope, cond, m), True).to_numpy(zero_copy_only=False)
        old = _verdict_code(evaluate_expression(pack.old, cond, m))
        new = _verdict_code(evaluate_expression(pack.new, cond, m))
        impact = _impact(in_scope, old, new)
        scenario = _scenario(pack, cond, m, new, in_scope)

        names = [s.name for s in pack.scenarios] + ["other"]
        remedies = [s.remedy for s in pack.scenarios] + [""]
        svc_names = pa.array([s.name for s in rc.services.services] + [None], pa.string())
        svc_remedy = pa.array([s.remedy for s in rc.services.services] + [None], pa.string())
        svc_idx = pa.array(np.where(service >= 0, service, len(rc.services.services)))
        third_party = svc_names.take(svc_idx)
        scen_str = pa.array(names + [None], pa.string()).take(pa.array(np.where(scenario >= 0, scenario, len(names))))
        remedy = pa.array(remedies + [None], pa.string()).take(pa.array(np.where(scenario >= 0, scenario, len(names))))
        remedy = pc.if_else(
            pc.and_(pc.equal(pc.fill_null(scen_str, ""), "third_party_service"), pc.is_valid(svc_remedy.take(svc_idx))),
            pc.binary_join_element_wise(svc_remedy.take(svc_idx), remedy, " "),
            remedy,
        )

        warnings = self._warning_ids(named_status, c, nf, ip_state, has_relay_ip, host_known, hf, ip_disabled, service, via, in_scope, ipf)

        reason = _reason(
            kind=kind, p1_dom=_take_str(p1d["values"], c["p1_domain"]), p1_acc=p1_acc,
            p2_dom=_take_str(p2d["values"], c["p2_domain"]), p2_acc=p2_acc,
            cert_source=cert_source, cert_state=cert_state, cert_text=cert_text, cert_present=cert_present,
            conn_match=conn_match, via=via, matched=matched_name, ip_text=ip_text,
            old=old, new=new, in_scope=in_scope, cond=cond, pack=pack,
            relay_host=_take_str(f["relay_host"]["values"], c["relay_host"]),
            host=_take_str(hf["values"], c["host"]),
        )
        return {
            "p1_accepted": p1_acc, "p2_accepted": p2_acc, "cert_accepted": cert_state.astype(np.int8),
            "connector_match": conn_match.astype(np.int8), "matched_connector": matched_name,
            "source_ip": ip_text,
            "verdict_old": old, "verdict_new": new, "impact": impact,
            "scenario": pc.if_else(pa.array(scenario >= 0), scen_str, pa.scalar("")),
            "third_party": third_party, "reason": reason, "remedy": remedy, "warnings": warnings,
        }

    def _warning_ids(self, named_status, c, nf, ip_state, has_relay_ip, host_known, hf, ip_disabled, service, via, in_scope, ipf) -> np.ndarray:
        """Per combo and warning kind (_WARNING_KINDS), the id of its hygiene or data-quality
        warning text (relay-rules.md), or -1; counted in messages per batch by _count_warnings."""
        m = len(named_status)
        out = np.full((len(_WARNING_KINDS), m), -1, dtype=np.int32)

        def add(kind: str, mask: np.ndarray, label_fn, key: np.ndarray | None = None) -> None:
            """Python runs once per distinct warning text, never per combo."""
            if not mask.any():
                return
            key = np.zeros(m, dtype=np.int64) if key is None else key
            distinct, which = np.unique(key[mask], return_inverse=True)
            label_ids = np.array([self._label_id(label_fn(int(k))) for k in distinct], dtype=np.int32)
            out[_WARNING_KINDS.index(kind), mask] = label_ids[which]

        add("connector", named_status == 3, lambda k: f"connector {_value(nf['values'], k)!r} named in the logs is not in the config (counted as a match)", c["connector"])
        add("ip", has_relay_ip & (ip_state == 0), lambda k: f"source IP {_value(ipf['values'], k)!r} is not an IP address (treated as unknown)", c["relay_ip"])
        add("ipv6", ip_state == 2, lambda _k: "IPv6 source addresses never match a connector (Exchange Online connectors are IPv4 only)")
        add("host", ~has_relay_ip & ~host_known & (c["host"] < len(hf["values"])), lambda k: f"host {_value(hf['values'], k)!r} is not in the config [[hosts]]: its source IP and certificate are unknown", c["host"])
        add("disabled", ip_disabled & in_scope, lambda _k: "traffic still comes from the range of a disabled OnPremises connector")
        svc = self.rc.services.services
        add("shared_ip", (service >= 0) & (via == 1) & in_scope, lambda k: f"third-party service {svc[k].name} is matched by a connector IP range: shared IPs let other tenants relay too (MC1226222)", np.maximum(service, 0))
        return out

    def _label_id(self, label: str) -> int:
        if label not in self._label_ids:
            self._label_ids[label] = len(self._labels)
            self._labels.append(label)
        return self._label_ids[label]


# ------------------------------------------------------------------------------------------
# helpers: codes, factorization, three-valued values, impact, scenario, reason, assembly


def _p1_kind(null_sender: np.ndarray, p1_domain_codes: np.ndarray, n_dict: int) -> np.ndarray:
    """0 unknown, 1 null sender <>, 2 address with a domain, 3 no domain (a bare local user),
    from null_sender's code (0 address, 1 null sender, 3 P1 unknown)."""
    has_dom = p1_domain_codes < n_dict
    return np.select([null_sender == 3, null_sender == 1, has_dom], [0, 1, 2], default=3).astype(np.int8)


def _bool_code(col) -> np.ndarray | None:
    """false 0, true 1, null 3 (codes for factorization); None when every row is null."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count == len(col):
        return None
    return _view(pc.fill_null(pc.cast(col, pa.int8()), pa.scalar(3, pa.int8())))


def _factorize(code_arrays: list[np.ndarray | None], sizes: list[int], n: int, scratch: _Scratch) -> tuple[np.ndarray, list[np.ndarray | None], int]:
    """Dense ids for the distinct rows of several code arrays (None: a constant column):
    (intp id per row, each array's code per id, number of ids). The codes are packed into
    one int64 key by bit shifts and hashed once by Arrow; the distinct keys unpack into the
    codes per id. Codes wider than 62 bits together are densified part way, and the codes
    per id then come from a representative row instead."""
    widths = [int(size - 1).bit_length() if codes is not None else 0 for codes, size in zip(code_arrays, sizes, strict=True)]
    live = [(codes, bits) for codes, bits in zip(code_arrays, widths, strict=True) if bits > 0]
    key, exact = _pack_bits(live, n, scratch)
    enc = pc.dictionary_encode(pa.array(key))
    inverse = scratch.array("inverse", n, np.intp)  # intp: numpy's gathers want no conversion
    np.copyto(inverse, _view(enc.indices), casting="safe")
    m = len(enc.dictionary)
    if not exact:
        rep = np.empty(m, dtype=np.intp)
        rep[inverse] = np.arange(n, dtype=np.intp)
        return inverse, [None if bits == 0 else codes[rep] for codes, bits in zip(code_arrays, widths, strict=True)], m
    distinct = enc.dictionary.to_numpy()
    per_id: list[np.ndarray | None] = [None] * len(code_arrays)
    for i in reversed(range(len(code_arrays))):
        if widths[i]:
            per_id[i] = (distinct & ((1 << widths[i]) - 1)).astype(np.int32)
            distinct = distinct >> widths[i]
    return inverse, per_id, m


def _pack_bits(live: list[tuple[np.ndarray, int]], n: int, scratch: _Scratch) -> tuple[np.ndarray, bool]:
    """(the codes of each row packed side by side into one integer key, as the (codes, bit
    width) pairs say; False if the key had to be densified part way to stay within 62 bits).
    Packed 32 bits at a time first: half the memory traffic of int64 arithmetic and no casts
    for the 32-bit codes; a key that fits 32 bits is hashed as it is."""
    words: list[tuple[np.ndarray, int]] = []  # (uint32 partial key, bits used)
    for codes, bits in live:
        if not words or words[-1][1] + bits > 32:
            word = scratch.array(f"word{len(words)}", n, np.uint32)
            np.copyto(word, codes, casting="unsafe")  # the first codes start the word
            words.append((word, bits))
            continue
        word, used = words[-1]
        np.left_shift(word, bits, out=word)
        if codes.dtype.itemsize == 4:
            np.bitwise_or(word, codes.view(np.uint32), out=word)
        else:
            np.bitwise_or(word, codes, out=word, casting="unsafe")
        words[-1] = (word, used + bits)
    if not words:
        return np.zeros(n, dtype=np.uint32), True
    if len(words) == 1:
        return words[0][0], True
    key = scratch.array("key", n, np.int64)
    np.copyto(key, words[0][0], casting="unsafe")
    used, exact = words[0][1], True
    for word, bits in words[1:]:
        if used + bits > 62:
            key, used = _densify(key)
            exact = False
        np.left_shift(key, bits, out=key)
        np.bitwise_or(key, word, out=key, casting="unsafe")
        used += bits
    return key, exact


def _densify(key: np.ndarray) -> tuple[np.ndarray, int]:
    """(ids 0..m-1 in first-seen order, bits those ids need), hashed by Arrow."""
    enc = pc.dictionary_encode(pa.array(key))
    ids = _view(enc.indices.cast(pa.int64()))
    return ids.copy(), max(1, (len(enc.dictionary) - 1).bit_length())


def _value(values: pa.Array, code: int):
    """values[code] as Python, None for the null slot past the end."""
    return values[code].as_py() if code < len(values) else None


def _tri(codes: np.ndarray) -> pa.Array:
    """0 false, 1 true, 2 unknown -> nullable boolean array."""
    codes = np.asarray(codes)
    return pa.array(codes == 1, mask=codes == 2)


def _verdict_code(arr: pa.Array) -> np.ndarray:
    """accept 0, reject 1, unknown 2 (indices into VERDICT_VALUES)."""
    valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
    val = pc.fill_null(arr, False).to_numpy(zero_copy_only=False)
    return np.where(~valid, 2, np.where(val, 0, 1)).astype(np.int8)


_IMPACT = {name: i for i, name in enumerate(IMPACTS)}


def _impact(in_scope: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """relay-rules.md, Impact and scenario."""
    return np.select(
        [~in_scope, new == 0, new == 2, old == 0, old == 1],
        [_IMPACT["not_relayed"], _IMPACT["unaffected"], _IMPACT["unknown"], _IMPACT["newly_rejected"], _IMPACT["already_rejected"]],
        default=_IMPACT["possibly_rejected"],
    ).astype(np.int8)


def _scenario(pack: Pack, cond: dict, m: int, new: np.ndarray, in_scope: np.ndarray) -> np.ndarray:
    """Index of the first scenario whose condition is true, for in-scope messages the new rule
    rejects; len(scenarios) ('other') when none holds; -1 otherwise."""
    out = np.full(m, -1, dtype=np.int64)
    pending = in_scope & (new == 1)
    for i, s in enumerate(pack.scenarios):
        hit = pc.fill_null(evaluate_expression(s.when, cond, m), False).to_numpy(zero_copy_only=False)
        take = pending & hit
        out[take] = i
        pending &= ~take
    out[pending] = len(pack.scenarios)
    return out


def _take_str(values: pa.Array, codes: np.ndarray) -> pa.Array:
    """values[codes] where a code past the end means null."""
    values = values.cast(pa.string())
    idx = pa.array(codes, mask=codes >= len(values))
    return values.take(idx)


def _cat(*parts) -> pa.Array:
    """Concatenate strings/arrays element-wise; null if any part is null."""
    return pc.binary_join_element_wise(*parts, "")


def _choose(conditions: list[np.ndarray], values: list, default) -> pa.Array:
    """First value whose condition holds (vectorized CASE WHEN)."""
    conds = pa.StructArray.from_arrays(
        [pa.array(np.asarray(x, dtype=bool)) for x in conditions], names=[f"c{i}" for i in range(len(conditions))]
    )
    vals = [v if isinstance(v, pa.Array) else pa.scalar(v, pa.string()) for v in [*values, default]]
    return pc.case_when(conds, *vals)


def _reason(*, kind, p1_dom, p1_acc, p2_dom, p2_acc, cert_source, cert_state, cert_text, cert_present,
            conn_match, via, matched, ip_text, old, new, in_scope, cond, pack, relay_host, host) -> pa.Array:
    """The one-line human explanation, built from parts with string kernels over combos."""
    m = len(kind)
    p1 = _choose(
        [kind == 0, kind == 1, kind == 3, p1_acc == 1],
        ["P1 not in the log", "P1 is the null sender <>", "P1 has no domain (local user)",
         _cat("P1 domain ", p1_dom, " is accepted")],
        _cat("P1 domain ", p1_dom, " is not accepted"),
    )
    ignored = (p2_acc == 1) & (new == 1) & (old == 0)
    p2 = _choose(
        [p2_acc == 2, ignored, p2_acc == 1],
        ["P2 not in the log", _cat("the new rule ignores P2 ", p2_dom), _cat("P2 ", p2_dom, " is accepted")],
        _cat("P2 ", p2_dom, " is not accepted"),
    )
    cert = _choose(
        [cert_source == 4, cert_source == 5, ~cert_present, cert_state == 1, cert_state == 2],
        ["no certificate recorded, assumed none", "certificate not recorded (unknown)",
         _cat("host ", pc.fill_null(host, "?"), " presents no certificate"),
         _cat("certificate ", cert_text, " is an accepted domain"),
         _cat("certificate ", cert_text, " is only a subdomain of an accepted domain (unknown whether it counts)")],
        _cat("certificate ", cert_text, " is not an accepted domain"),
    )
    ip_shown = pc.fill_null(ip_text, "unknown")
    conn = _choose(
        [(conn_match == 1) & (via == 3), (conn_match == 1) & (via == 1), (conn_match == 1) & (via == 2), conn_match == 2],
        [_cat("connector ", matched, " named in the log"), _cat("matched connector ", matched, " by IP ", ip_shown),
         _cat("matched connector ", matched, " by certificate"), pc.if_else(pc.is_valid(ip_text), _cat("source IP ", ip_shown, " is not an IP address, connector match unknown"),
                    pa.scalar("source IP not known (no relay IP in the log, host not in [[hosts]]), connector match unknown"))],
        _cat("source ", ip_shown, " matches no counted connector"),
    )
    judged = pc.binary_join_element_wise(p1, p2, cert, conn, "; ")
    to_exo = cond["to_exo"].to_numpy(zero_copy_only=False)
    ext = cond["has_external_rcpt"].to_numpy(zero_copy_only=False)
    not_relayed = _choose(
        [~to_exo, ~ext & ~cond["has_internal_rcpt"].to_numpy(zero_copy_only=False), ~ext,
         cond["logged_by_exo"].to_numpy(zero_copy_only=False)],
        [_cat("not relayed: next hop ", pc.fill_null(relay_host, "?"), " is not Exchange Online"),
         "not in scope: no recipient", "not relayed: all recipients are in accepted domains",
         "not relayed: did not come through an inbound connector"],
        _cat("not in scope of ", pa.array([pack.name] * m, pa.string())),
    )
    return pc.if_else(pa.array(in_scope), judged, not_relayed)


def _gather(per_combo: np.ndarray, inverse: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """per_combo[inverse], into `out` or Arrow's memory pool (see _view); ids are always in
    range, so mode="wrap" skips numpy's bounds checks and output buffering."""
    out = _pooled(len(inverse), per_combo.dtype) if out is None else out
    np.take(per_combo, inverse, out=out, mode="wrap")
    return out


def _int32_array(values: np.ndarray, validity: pa.Buffer | None = None) -> pa.Array:
    return pa.Array.from_buffers(pa.int32(), len(values), [validity, pa.py_buffer(values)])


def _dict_from_codes(codes: np.ndarray, values: tuple[str, ...], inverse: np.ndarray) -> pa.DictionaryArray:
    indices = _int32_array(_gather(codes.astype(np.int32), inverse))
    return pa.DictionaryArray.from_arrays(indices, pa.array(values, pa.string()), safe=False)


def _dict_from_vocabulary(codes: np.ndarray, vocabulary: pa.Array, inverse: np.ndarray, validity: pa.Buffer | None) -> pa.DictionaryArray:
    """Per-combo codes into a run-wide vocabulary (-1 null) -> a row column whose dictionary
    holds just the values this batch uses (one int32 gather per row; nulls come from the
    validity bitmap that _flag_bitmaps made)."""
    valid = codes >= 0
    present = np.zeros(len(vocabulary), dtype=bool)
    present[codes[valid]] = True
    used = np.flatnonzero(present)
    remap = np.cumsum(present, dtype=np.int32) - 1
    table = np.where(valid, remap[np.maximum(codes, 0)] if len(remap) else 0, 0).astype(np.int32)
    indices = _int32_array(_gather(table, inverse), validity)
    # in range by construction, so Arrow need not check a million indices again
    return pa.DictionaryArray.from_arrays(indices, vocabulary.take(pa.array(used, pa.int64())), safe=False)


def _flag_bitmaps(flags: dict[str, np.ndarray], inverse: np.ndarray, scratch: _Scratch) -> dict[str, pa.Buffer | None]:
    """Several per-combo boolean columns -> one Arrow bitmap per row each, with ONE gather: the
    combo's flags are packed into the bits of an integer first. None for a flag true on every
    row (a validity bitmap that can be left out)."""
    assert len(flags) <= 16
    packed = np.zeros(len(next(iter(flags.values()))), dtype=np.uint16)
    for i, flag in enumerate(flags.values()):
        packed |= flag.astype(np.uint16) << i
    rows = _gather(packed, inverse, scratch.array("flags", len(inverse), np.uint16))
    bit = scratch.array("bit", len(rows), np.uint16)
    is_set = scratch.array("is_set", len(rows), np.bool_)
    out = {}
    for i, (name, flag) in enumerate(flags.items()):
        if flag.all():
            out[name] = None
            continue
        np.bitwise_and(rows, np.uint16(1 << i), out=bit)
        np.not_equal(bit, 0, out=is_set)  # contiguous bytes: packbits' fast path
        out[name] = pa.py_buffer(np.packbits(is_set, bitorder="little"))
    return out


def _broadcast(per_combo: dict[str, np.ndarray], vocabularies: dict[str, pa.Array], inverse: np.ndarray, rule_pack: pa.Array, scratch: _Scratch) -> dict[str, pa.Array]:
    """Per-combo results -> row columns: one int32 gather per dictionary column, and one
    gather for every boolean value and validity bit together."""
    n = len(inverse)
    tri = ("p1_accepted", "p2_accepted", "cert_accepted", "connector_match")
    flags = {f"{k}.value": per_combo[k] == 1 for k in tri}
    flags.update({f"{k}.valid": per_combo[k] != 2 for k in tri})
    flags.update({f"{k}.valid": per_combo[k] >= 0 for k in _STRING_OUTPUTS})
    bitmaps = _flag_bitmaps(flags, inverse, scratch)
    out = {"rule_pack": rule_pack}
    for k in tri:
        data = bitmaps[f"{k}.value"] or pa.py_buffer(np.full((n + 7) // 8, 0xFF, dtype=np.uint8))
        out[k] = pa.BooleanArray.from_buffers(pa.bool_(), n, [bitmaps[f"{k}.valid"], data])
    out["verdict_old"] = _dict_from_codes(per_combo["verdict_old"], VERDICT_VALUES, inverse)
    out["verdict_new"] = _dict_from_codes(per_combo["verdict_new"], VERDICT_VALUES, inverse)
    out["impact"] = _dict_from_codes(per_combo["impact"], IMPACTS, inverse)
    for k in _STRING_OUTPUTS:
        out[k] = _dict_from_vocabulary(per_combo[k], vocabularies[k], inverse, bitmaps[f"{k}.valid"])
    return out


__all__ = ["Engine", "RuleContext", "DICT"]
