"""Incremental ingest: which input files are new, grown or already read.

WORKDIR/manifest.json records, per file read: size, modification time and a fingerprint of its
first 64 KiB of (decompressed) content. On the next run into the same WORKDIR:

- same name, size, time and fingerprint: unchanged, skipped;
- same fingerprint, size and time under another name: a rotated file (maillog -> maillog.1),
  recognised and skipped;
- anything else is read; if it shares its fingerprint or its name with a file read before
  (it grew, was rotated and grew, or was compressed), the rows that file produced are removed
  first, so a message is never counted twice;
- when anything is read, an unchanged or rotated file whose earlier rows include messages still
  open at the end of that run (`incomplete`) is read again with it, its earlier rows replaced:
  a message whose first lines are in the rotated file and whose last lines are in the new one
  comes out as one whole message, not as two incomplete halves.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .ingest.base import HEAD_BYTES, Source
from .workdir import read_json, write_json

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class FileState:
    size: int
    mtime: float
    head: str

    def to_json(self) -> dict:
        return {"size": self.size, "mtime": self.mtime, "head": self.head}


def file_state(source: Source) -> FileState:
    """Size and time of the file (or zip member) and a fingerprint of its decompressed head."""
    if source.member is not None:
        with zipfile.ZipFile(source.path) as zf:
            info = zf.getinfo(source.member)
            size, mtime = info.file_size, float(hash(info.date_time) & 0xFFFFFFFF)
    else:
        st = source.path.stat()
        size, mtime = st.st_size, st.st_mtime
    head = hashlib.sha256(source.head(HEAD_BYTES)).hexdigest()
    return FileState(size, mtime, head)


@dataclass
class Plan:
    """What an incremental ingest does with the inputs."""

    to_read: list[Source]
    skipped: dict[str, str]  # source name -> why it was not read again
    replaced: set[str]  # names whose earlier rows must be removed
    states: dict[str, FileState]
    rotated: dict[str, str]  # new name -> the name it was read under

    def renames(self, manifest: Manifest) -> dict[str, str]:
        """source_file values to relabel: rows written under a rotated file's old name."""
        return {manifest.rows_name(old): new for new, old in self.rotated.items()}


class Manifest:
    def __init__(self, workdir: Path):
        self.path = Path(workdir) / MANIFEST
        self.files: dict[str, dict] = read_json(self.path).get("files", {})

    def plan(self, sources: list[Source], open_rows: frozenset[str] = frozenset()) -> Plan:
        """What to read, skip and replace; `open_rows` are the source_file values of earlier
        rows still incomplete (see the module docstring)."""
        by_head: dict[str, list[str]] = {}
        for name, entry in self.files.items():
            by_head.setdefault(entry["head"], []).append(name)
        states = {src.name: file_state(src) for src in sources}
        current = set(states)

        # First the rotations: an unseen name whose content is exactly a file read before.
        rotated: dict[str, str] = {}
        for name, state in states.items():
            if name in self.files:
                continue
            twins = [
                n for n in by_head.get(state.head, [])
                if self.files[n]["size"] == state.size and self.files[n]["mtime"] == state.mtime
            ]
            if twins:
                rotated[name] = twins[0]
        claimed = set(rotated.values())  # names whose rows now belong to a rotated file

        to_read, skipped, replaced = [], {}, set()
        for src in sources:
            state, old = states[src.name], self.files.get(src.name)
            if src.name in rotated:
                skipped[src.name] = f"same file as {rotated[src.name]} (rotated), already read"
                continue
            if old and old == {**old, **state.to_json()}:
                skipped[src.name] = "unchanged since the last run"
                continue
            to_read.append(src)
            if old and src.name not in claimed:
                replaced.add(self.rows_name(src.name))
            # The same content read before under a name that is gone (grown, then rotated or
            # compressed): its rows are replaced by this fuller read.
            replaced.update(
                self.rows_name(n) for n in by_head.get(state.head, []) if n not in current and n not in claimed
            )
        if to_read:
            self._reopen(sources, open_rows, to_read, skipped, replaced, rotated)
        return Plan(to_read, skipped, replaced, states, rotated)

    def _reopen(self, sources, open_rows, to_read, skipped, replaced, rotated) -> None:
        """Read again the skipped files whose earlier rows hold messages still open."""
        for src in sources:
            if src.name not in skipped:
                continue
            rows = self.rows_name(rotated.get(src.name, src.name))
            if rows not in open_rows:
                continue
            del skipped[src.name]
            rotated.pop(src.name, None)  # its rows are replaced, not relabelled
            to_read.append(src)
            replaced.add(rows)
        order = {src.name: i for i, src in enumerate(sources)}
        to_read.sort(key=lambda src: order[src.name])  # formats that read in the given order

    def rows_name(self, name: str) -> str:
        """The source_file value the rows of a manifest entry carry (its first name)."""
        return self.files.get(name, {}).get("rows", name)

    def update(self, plan: Plan) -> None:
        """Record what this run read; rotated names keep pointing at their first rows."""
        for name in plan.rotated:
            # ingest relabels the rotated rows with the new name (Plan.renames)
            self.files[name] = {**plan.states[name].to_json(), "rows": name}
        stale = [n for n, e in self.files.items() if e.get("rows", n) in plan.replaced]
        for n in stale:
            del self.files[n]
        for src in plan.to_read:
            # A name re-used after a rotation must not keep pointing at the rotated rows.
            self.files[src.name] = {**plan.states[src.name].to_json(), "rows": src.name}

    def save(self) -> None:
        write_json(self.path, {"files": self.files})
