"""The third-party sending-service catalog (catalog.toml) plus the tenant's own [[third_parties]].

A P1 domain matches a service when it equals one of the service's domains or is a subdomain of
it; the tenant's entries are looked up first, so they win over the catalog.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..config import ThirdParty
from .domains import longest_suffix_match

CATALOG_PATH = Path(__file__).with_name("catalog.toml")


@cache
def builtin_services() -> tuple[ThirdParty, ...]:
    data = tomllib.loads(CATALOG_PATH.read_text(encoding="utf-8"))
    return tuple(
        ThirdParty(s["name"], tuple(d.lower() for d in s["domains"]), s.get("remedy", ""), s.get("category", ""))
        for s in data["services"]
    )


@dataclass(frozen=True)
class ServiceMatcher:
    """Maps domains to services: user entries first, then the built-in catalog."""

    services: tuple[ThirdParty, ...]
    user_domains: pa.Array
    user_owner: np.ndarray
    catalog_domains: pa.Array
    catalog_owner: np.ndarray

    @classmethod
    def build(cls, user: tuple[ThirdParty, ...]) -> ServiceMatcher:
        services = tuple(user) + builtin_services()
        u_dom, u_own, c_dom, c_own = [], [], [], []
        for i, s in enumerate(services):
            doms, owners = (u_dom, u_own) if i < len(user) else (c_dom, c_own)
            for d in s.domains:
                doms.append(d)
                owners.append(i)
        return cls(
            services,
            pa.array(u_dom, pa.string()),
            np.array(u_own, dtype=np.int64),
            pa.array(c_dom, pa.string()),
            np.array(c_own, dtype=np.int64),
        )

    def match(self, domains: pa.Array) -> np.ndarray:
        """Index into `services` for each domain, -1 where none matches (vectorized)."""
        out = np.full(len(domains), -1, dtype=np.int64)
        for doms, owners in ((self.user_domains, self.user_owner), (self.catalog_domains, self.catalog_owner)):
            if len(doms) == 0:
                continue
            idx = longest_suffix_match(domains, doms)
            hit = (out < 0) & (idx >= 0)
            out[hit] = owners[idx[hit]]
        return out
