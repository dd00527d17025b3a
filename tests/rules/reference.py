"""A plain per-message reference implementation of relay-rules.md, written straight from the
spec with no vectorization. The property tests check the engine against it; it must never be
imported by the package."""

from __future__ import annotations

import fnmatch
import ipaddress

from pipeline.config import TenantConfig
from pipeline.rules.catalog import builtin_services

U = None  # unknown


def k_and(a, b):
    if a is False or b is False:
        return False
    if a is True and b is True:
        return True
    return U


def k_or(a, b):
    if a is True or b is True:
        return True
    if a is False and b is False:
        return False
    return U


def k_not(a):
    return U if a is None else not a


def norm(d: str) -> str:
    return d.strip().lower().rstrip(".")


def domain(addr: str | None) -> str | None:
    if not addr or "@" not in addr:
        return None
    d = norm(addr.rsplit("@", 1)[1].strip("<> "))
    return d or None


class Reference:
    def __init__(self, cfg: TenantConfig, pack: str = "relay-2023"):
        self.cfg = cfg
        self.pack = pack
        self.types = ("OnPremises",) if pack == "relay-2023" else ("OnPremises", "Partner")
        self.counted = [c for c in cfg.connectors if c.enabled and c.type in self.types]
        self.accepted = {d.name for d in cfg.accepted_domains}
        self.msd = {d.name for d in cfg.accepted_domains if d.match_subdomains}

    def acc(self, d: str) -> bool:
        d = norm(d)
        return d in self.accepted or any(d.endswith("." + m) for m in self.msd)

    def parent(self, d: str) -> bool:
        d = norm(d)
        return any(d.endswith("." + a) for a in self.accepted)

    def service(self, d: str | None) -> str | None:
        if d is None:
            return None
        for group in (self.cfg.third_parties, builtin_services()):
            best = None
            for s in group:
                for sd in s.domains:
                    if (d == sd or d.endswith("." + sd)) and (best is None or len(sd) > best[0]):
                        best = (len(sd), s.name)
            if best:
                return best[1]
        return None

    def cert_value(self, names: list[str]):
        if self.cfg.rules.cert_names == "cn":
            names = names[:1]
        bare = [norm(n[2:] if n.startswith("*.") else n) for n in names]
        if any(self.acc(b) for b in bare):
            return True
        if any(self.parent(b) for b in bare):
            return {"accept": True, "reject": False, "unknown": U}[self.cfg.rules.cert_parent_domain]
        return False

    def cert_matches(self, names: list[str]) -> bool:
        if self.cfg.rules.cert_names == "cn":
            names = names[:1]
        for c in self.counted:
            p = c.tls_sender_certificate_name
            if not p:
                continue
            for n in names:
                b = norm(n[2:] if n.startswith("*.") else n)
                if n == p or (p.startswith("*.") and (b == p[2:] or b.endswith(p[1:]))):
                    return True
        return False

    def judge(self, m: dict) -> dict:
        cfg = self.cfg
        host = cfg.host(m["host"]) if m.get("host") else None
        ip_text = m.get("relay_ip") or (host.egress_ip if host else None)
        ip_known, ip_match = False, False
        if ip_text is not None:
            try:
                ip = ipaddress.ip_address(ip_text)
                ip_known = True
                if ip.version == 4:
                    ip_match = any(r.lo <= int(ip) <= r.hi for c in self.counted for r in c.sender_ip_addresses)
            except ValueError:
                ip_known = False

        named = m.get("connector")
        named_cfg = next((c for c in cfg.connectors if named and c.name.lower() == named.lower()), None)
        named_counted = named_cfg is not None and named_cfg in self.counted

        cert_unknown = False
        cert_acc = False
        cert_match = False
        if m.get("tls_cert"):
            names = [n.strip().lower() for n in m["tls_cert"].split(";") if n.strip()]
            cert_acc, cert_match = self.cert_value(names), self.cert_matches(names)
        elif named_counted and named_cfg.certificate_only:
            p = named_cfg.tls_sender_certificate_name
            if p.startswith("*."):
                d = p[2:]
                if self.acc("x." + d) or cfg.rules.cert_parent_domain == "accept" and (self.acc(d) or self.parent(d)):
                    cert_acc = True
                else:
                    cert_acc = U
            else:
                cert_acc = self.cert_value([p])
        elif host is not None:
            cert_acc, cert_match = self.cert_value(list(host.certificate)), self.cert_matches(list(host.certificate))
        elif cfg.rules.unknown_certificate == "unknown":
            cert_unknown = True
            cert_acc = U

        if named:
            cm = named_counted or named_cfg is None  # unknown names count, with a warning
        elif ip_match or cert_match:
            cm = True
        elif m.get("logged_by_exo") and not m.get("relay_ip"):
            cm = False  # started in the cloud: message trace has no FromIP for it
        elif not ip_known or (cert_unknown and any(c.tls_sender_certificate_name for c in self.counted)):
            cm = U
        else:
            cm = False

        p1 = m.get("p1_sender")
        if p1 is not None:
            p1 = p1.strip()
            p1 = "" if p1 == "<>" else p1.strip("<>")
        p1_null = p1 == ""
        p1_dom = domain(p1)
        p1_acc = U if p1 is None else (False if p1_dom is None else self.acc(p1_dom))
        p2_dom = domain(m.get("p2_sender"))
        p2_acc = U if p2_dom is None else self.acc(p2_dom)
        third = self.service(p1_dom)

        targets = cfg.relay_targets
        rh = m.get("relay_host")
        to_exo = rh is None or any(
            fnmatch.fnmatch(norm(rh), t) or (t.startswith("*.") and norm(rh) == t[2:]) for t in targets
        )
        rdoms = {domain(r) for r in (m.get("recipients") or [])} - {None}
        external = (not rdoms) or any(not self.acc(d) for d in rdoms)
        internal = any(self.acc(d) for d in rdoms)
        exo = bool(m.get("logged_by_exo"))

        if self.pack == "relay-2023":
            scope = k_and(k_and(to_exo, external), k_or(not exo, cm))
            old = k_and(cm, k_or(k_or(cert_acc, p1_acc), p2_acc))
            new = k_and(cm, k_or(cert_acc, p1_acc))
        else:
            scope = k_and(to_exo, internal)
            old = True
            new = k_or(cm, k_not(p1_acc))
        in_scope = scope is not False
        v = {True: "accept", False: "reject", None: "unknown"}
        if not in_scope:
            impact = "not_relayed"
        elif new is True:
            impact = "unaffected"
        elif new is None:
            impact = "unknown"
        elif old is True:
            impact = "newly_rejected"
        elif old is False:
            impact = "already_rejected"
        else:
            impact = "possibly_rejected"
        scenario = ""
        if in_scope and new is False:
            if self.pack == "relay-2023":
                if cm is False:
                    scenario = "no_connector_match"
                elif p1_null:
                    scenario = "ndr_null_sender"
                elif third:
                    scenario = "third_party_service"
                elif p1_acc is False:
                    scenario = "app_nonaccepted_p1"
                else:
                    scenario = "other"
            else:
                scenario = "direct_send_own_domain"
        return {
            "p1_accepted": p1_acc, "p2_accepted": p2_acc, "cert_accepted": cert_acc, "connector_match": cm,
            "verdict_old": v[old], "verdict_new": v[new], "impact": impact, "scenario": scenario,
            "third_party": third,
        }
