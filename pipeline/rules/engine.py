"""The one vectorized rule engine: messages batch in, verdicts batch out, for any rule pack.

How it stays fast (mail logs repeat the same few domains, IPs, hosts and certificates):
1. every input column is dictionary-encoded; each condition is computed once per distinct
   value of its column (`_ColumnFacts`), never per message;
2. the row-wise tuple of dictionary codes is factorized into "combos" (distinct combinations
   of inputs that matter), typically thousands for millions of messages;
3. conditions, verdicts, impact, scenario and reason are computed per combo with Kleene
   kernels (`_judge`), and broadcast back to the rows with one integer gather per column.

No Python code runs per message; Python loops only over config items (connectors, hosts).
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


def _dictionary(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(codes with null -> len(dictionary), dictionary) for any string-like column."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col.cast(pa.string()))
    dictionary = col.dictionary.cast(pa.string())
    indices = col.indices
    if indices.type != pa.int32():
        indices = indices.cast(pa.int32())
    # Read the index buffer in place (zero copy); nulls get the extra slot len(dictionary).
    codes = np.frombuffer(indices.buffers()[1], dtype=np.int32, count=len(indices) + indices.offset)[indices.offset:]
    if indices.null_count:
        codes = np.where(_validity(indices), codes, np.int32(len(dictionary)))
    return codes, dictionary


def _validity(arr: pa.Array) -> np.ndarray:
    """The validity bitmap as a bool array (all true when the array has no bitmap)."""
    bitmap = arr.buffers()[0]
    if bitmap is None:
        return np.ones(len(arr), dtype=bool)
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
    return bits[arr.offset : arr.offset + len(arr)].view(bool)


def _with_null(values: np.ndarray, null_value) -> np.ndarray:
    return np.append(values, np.array([null_value], dtype=values.dtype))


class _FactCache:
    """Remembers per-dictionary facts between batches: Parquet row groups of one dataset
    usually carry the same dictionary, so it is computed once per run, not per batch."""

    def __init__(self) -> None:
        self._store: dict[str, tuple[pa.Array, object]] = {}

    def get(self, column: str, dictionary: pa.Array, compute):
        hit = self._store.get(column)
        if hit is not None and hit[0].equals(dictionary):
            return hit[1]
        facts = compute(dictionary)
        self._store[column] = (dictionary, facts)
        return facts


# ------------------------------------------------------------------------------------------
# The engine


class Engine:
    """Evaluates batches of `messages` into `verdicts` for one tenant and pack."""

    def __init__(self, config: TenantConfig, pack: Pack | str | None = None):
        self.rc = RuleContext.build(config, pack)
        self.cache = _FactCache()
        self.warnings: Counter = Counter()
        self._warnings_lock = threading.Lock()  # evaluate() runs batches on a thread pool
        self._host_lookup = {h.name.lower(): h for h in config.hosts}
        self._named = {c.name.lower(): c for c in config.connectors}

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
        cols = {name: batch.column(name) if name in batch.schema.names else pa.nulls(n, MESSAGES.field(name).type) for name in INPUT_COLUMNS}

        facts, codes = {}, {}
        for col, fn in (
            ("p1_domain", self._domain_facts),
            ("p2_domain", self._domain_facts),
            ("relay_ip", self._ip_facts),
            ("tls_cert", self._cert_facts),
            ("host", self._host_facts),
            ("connector", self._connector_facts),
            ("relay_host", self._relay_host_facts),
            ("recipient_domains", self._recipient_facts),
        ):
            codes[col], dictionary = _dictionary(cols[col])
            facts[col] = self.cache.get(f"{col}:{fn.__name__}", dictionary, fn)

        null_sender = cols["null_sender"]
        if null_sender.null_count == n and "p1_sender" in batch.schema.names:
            # a table built by hand, without the derived column: derive it here
            p1 = batch.column("p1_sender")
            null_sender = pc.equal(pc.binary_length(p1.cast(pa.string()) if pa.types.is_dictionary(p1.type) else p1), 0)
        codes["p1_kind"] = _p1_kind(null_sender, codes["p1_domain"], len(facts["p1_domain"]["values"]))
        codes["logged_by_exo"] = _bool_code(cols["logged_by_exo"])
        codes["is_ndr"] = _bool_code(cols["is_ndr"])

        # Correlated columns side by side (a host has one IP and certificate), so the partial
        # keys stay small and densify through lookup tables instead of hashing.
        order = ["host", "relay_ip", "tls_cert", "connector", "relay_host", "logged_by_exo", "p1_domain", "p1_kind", "p2_domain", "recipient_domains", "is_ndr"]
        sizes = {k: len(facts[k]["values"]) + 1 if k in facts else 4 for k in order}
        inverse, rep = _factorize([codes[k] for k in order], [sizes[k] for k in order])
        combo = {k: codes[k][rep] for k in order}
        weights = np.bincount(inverse, minlength=len(rep))

        out = self._judge(combo, facts, weights)
        return _broadcast(out, inverse, self.rc.pack.name)

    # --- per combo ------------------------------------------------------------------------

    def _judge(self, c: dict[str, np.ndarray], f: dict, weights: np.ndarray) -> dict[str, pa.Array | np.ndarray]:
        rc, cfg = self.rc, self.rc.config
        m = len(weights)
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
        kind = c["p1_kind"]  # 0 unknown, 1 null sender, 2 address with domain, 3 no domain
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
            "has_external_rcpt": pa.array(f["recipient_domains"]["external"][c["recipient_domains"]]),
            "has_internal_rcpt": pa.array(f["recipient_domains"]["internal"][c["recipient_domains"]]),
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

        self._note_warnings(weights, named_status, c, nf, ip_state, has_relay_ip, host_known, hf, ip_disabled, service, via, in_scope, ipf)

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
            "third_party": third_party, "reason": reason, "remedy": remedy,
        }

    def _note_warnings(self, weights, named_status, c, nf, ip_state, has_relay_ip, host_known, hf, ip_disabled, service, via, in_scope, ipf) -> None:
        """Hygiene and data-quality warnings, counted in messages (relay-rules.md)."""
        w = self.warnings

        def add(mask: np.ndarray, label_fn, key: np.ndarray | None = None) -> None:
            """Count messages per distinct `key` value under `mask`; Python runs once per
            distinct warning text, never per message or per combo."""
            if not mask.any():
                return
            key = np.zeros(len(mask), dtype=np.int64) if key is None else key
            totals = np.bincount(key[mask], weights=weights[mask])
            with self._warnings_lock:
                for k in np.flatnonzero(totals):
                    w[label_fn(int(k))] += int(totals[k])

        # Python here runs once per distinct warning combo, never per message.
        named_vals = nf["values"].to_pylist() + [None]
        add(named_status == 3, lambda k: f"connector {named_vals[k]!r} named in the logs is not in the config (counted as a match)", c["connector"])
        ip_vals = ipf["values"].to_pylist() + [None]
        add(has_relay_ip & (ip_state == 0), lambda k: f"source IP {ip_vals[k]!r} is not an IP address (treated as unknown)", c["relay_ip"])
        add((ip_state == 2), lambda _k: "IPv6 source addresses never match a connector (Exchange Online connectors are IPv4 only)")
        host_vals = hf["values"].to_pylist() + [None]
        add(~has_relay_ip & ~host_known & (c["host"] < len(hf["values"])), lambda k: f"host {host_vals[k]!r} is not in the config [[hosts]]: its source IP and certificate are unknown", c["host"])
        add(ip_disabled & in_scope, lambda _k: "traffic still comes from the range of a disabled OnPremises connector")
        svc = self.rc.services.services
        add((service >= 0) & (via == 1) & in_scope, lambda k: f"third-party service {svc[k].name} is matched by a connector IP range: shared IPs let other tenants relay too (MC1226222)", np.maximum(service, 0))


# ------------------------------------------------------------------------------------------
# helpers: codes, factorization, three-valued values, impact, scenario, reason, assembly


def _p1_kind(null_sender, p1_domain_codes: np.ndarray, n_dict: int) -> np.ndarray:
    """0 unknown, 1 null sender <>, 2 address with a domain, 3 no domain (a bare local user)."""
    code = _bool_code(null_sender)  # 0 address, 1 null sender, 3 P1 unknown
    has_dom = p1_domain_codes < n_dict
    return np.select([code == 3, code == 1, has_dom], [0, 1, 2], default=3).astype(np.int8)


def _bool_code(col) -> np.ndarray:
    """false 0, true 1, null 3 (codes for factorization), read off the bitmaps."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    if col.null_count == n:
        return np.full(n, 3, dtype=np.int8)
    col = col.cast(pa.bool_())
    bits = np.unpackbits(np.frombuffer(col.buffers()[1], dtype=np.uint8), bitorder="little")
    values = bits[col.offset : col.offset + n].astype(np.int8)
    return np.where(_validity(col), values, np.int8(3)) if col.null_count else values


def _factorize(code_arrays: list[np.ndarray], sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Dense ids for the distinct rows of several code arrays: (inverse per row, one
    representative row per id). Mixed-radix keys, re-densified before they could overflow."""
    n = len(code_arrays[0]) if code_arrays else 0
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    key = None
    span = 1
    for codes, size in zip(code_arrays, sizes, strict=True):
        if size == 1:
            continue
        if key is None:
            key = codes.astype(np.int64)
            span = size
            continue
        if span * size > _TABLE_LIMIT:
            key, span = _densify(key, span)
        key *= size  # in place: no temporaries per column
        key += codes
        span *= size
    if key is None:
        key = np.zeros(n, dtype=np.int64)
    inverse, m = _densify(key, span)
    rep = np.empty(m, dtype=np.int64)
    rep[inverse] = np.arange(n, dtype=np.int64)
    return inverse, rep


_TABLE_LIMIT = 1 << 20  # lookup tables stay in cache; past this the key is densified first


def _densify(key: np.ndarray, span: int | None = None) -> tuple[np.ndarray, int]:
    """Map keys to 0..m-1. A lookup table when the key space is small, else a hash."""
    if span is not None and span <= _TABLE_LIMIT:
        present = np.zeros(span, dtype=bool)
        present[key] = True
        uniq = np.flatnonzero(present)
        remap = np.empty(span, dtype=np.int32)
        remap[uniq] = np.arange(len(uniq))
        return remap[key], len(uniq)
    inverse, uniq = pd.factorize(key, sort=False)  # hashing: O(n), unlike a sort
    return inverse.astype(np.int64, copy=False), len(uniq)


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


def _dict_from_codes(codes: np.ndarray, values: tuple[str, ...], inverse: np.ndarray) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)[inverse]), pa.array(values, pa.string()))


def _dict_from_strings(per_combo: pa.Array, inverse: np.ndarray) -> pa.DictionaryArray:
    """Per-combo strings -> a row column sharing one small dictionary (one int32 gather)."""
    enc = pc.dictionary_encode(per_combo)
    codes = pc.fill_null(enc.indices.cast(pa.int32()), -1).to_numpy()
    idx = codes[inverse]
    validity = pa.py_buffer(np.packbits(idx >= 0, bitorder="little")) if (codes < 0).any() else None
    indices = pa.Array.from_buffers(pa.int32(), len(idx), [validity, pa.py_buffer(idx)])
    return pa.DictionaryArray.from_arrays(indices, enc.dictionary)


def _bools_from_codes(columns: dict[str, np.ndarray], inverse: np.ndarray) -> dict[str, pa.Array]:
    """Several per-combo 0/1/2 columns -> nullable boolean row columns with ONE gather: each
    combo's values and validities are packed into the bits of a byte first."""
    flags = np.zeros(len(next(iter(columns.values()))), dtype=np.uint8)
    for i, codes in enumerate(columns.values()):
        flags |= ((codes == 1).astype(np.uint8) << (2 * i)) | ((codes != 2).astype(np.uint8) << (2 * i + 1))
    rows = flags[inverse]
    out = {}
    for i, name in enumerate(columns):
        data = pa.py_buffer(np.packbits((rows >> (2 * i)) & 1, bitorder="little"))
        valid = (rows >> (2 * i + 1)) & 1
        validity = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
        out[name] = pa.BooleanArray.from_buffers(pa.bool_(), len(rows), [validity, data])
    return out


def _broadcast(out: dict, inverse: np.ndarray, pack_name: str) -> dict[str, pa.Array]:
    """Per-combo results -> row columns, one integer gather each."""
    n = len(inverse)
    return {
        "rule_pack": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([pack_name])),
        **_bools_from_codes({k: out[k] for k in ("p1_accepted", "p2_accepted", "cert_accepted", "connector_match")}, inverse),
        "matched_connector": _dict_from_strings(out["matched_connector"], inverse),
        "source_ip": _dict_from_strings(out["source_ip"], inverse),
        "verdict_old": _dict_from_codes(out["verdict_old"], VERDICT_VALUES, inverse),
        "verdict_new": _dict_from_codes(out["verdict_new"], VERDICT_VALUES, inverse),
        "impact": _dict_from_codes(out["impact"], IMPACTS, inverse),
        "scenario": _dict_from_strings(out["scenario"], inverse),
        "third_party": _dict_from_strings(out["third_party"], inverse),
        "reason": _dict_from_strings(out["reason"], inverse),
        "remedy": _dict_from_strings(out["remedy"], inverse),
    }


__all__ = ["Engine", "RuleContext", "DICT"]
