"""``HostLedger``: what a cloud provider remembers about its hosts once the cloud forgets them.

GCP and Azure delete a VM outright: after ``terminate`` a ``GET`` is a 404, so the cloud
alone cannot tell "terminated by Corral" from "never existed", and a provision retried with
an old client token would launch a second host. The ledger keeps one small entry per client
token (host id, type, tags, launch time, termination time) in a JSON file written
atomically (temporary file, fsync, rename), so both promises of
:class:`~byoc_agent.providers.base.HostProvider` hold across agent restarts:

* ``provision`` with a used token returns that host, even once terminated;
* ``describe`` of a host Corral terminated answers TERMINATED, not "not found".

An entry is written *before* the cloud call that creates the host (measure, then act):
after a crash the next ``provision`` finds the entry, asks the cloud whether the host
exists, and creates it only if it does not. One agent process owns a ledger file.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.providers.base import Host, HostState

_VERSION = 1


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One host a provider launched (or is about to launch) for one client token."""

    host_id: str
    client_token: str
    instance_type: str
    tags: Mapping[str, str]
    launched_at: datetime
    terminated_at: datetime | None = None
    private_ip: str | None = field(default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", MappingProxyType(dict(self.tags)))

    def terminated_host(self) -> Host:
        """The host as TERMINATED, from what the ledger kept."""
        return Host(
            host_id=self.host_id,
            instance_type=self.instance_type,
            state=HostState.TERMINATED,
            private_ip=self.private_ip,
            tags=self.tags,
            launched_at=self.launched_at,
        )


class HostLedger:
    """Client token → host, kept in ``path`` (or only in memory when ``path`` is None)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._entries: dict[str, LedgerEntry] = self._load() if path else {}

    def by_token(self, client_token: str) -> LedgerEntry | None:
        with self._lock:
            for entry in self._entries.values():
                if entry.client_token == client_token:
                    return entry
        return None

    def get(self, host_id: str) -> LedgerEntry | None:
        with self._lock:
            return self._entries.get(host_id)

    def record(self, entry: LedgerEntry) -> None:
        """Add or replace the entry for ``entry.host_id`` and write the file."""
        with self._lock:
            self._entries[entry.host_id] = entry
            self._save()

    def mark_terminated(self, host_id: str) -> LedgerEntry | None:
        """Record that the host is gone (idempotent); returns the entry, or None if unknown."""
        with self._lock:
            entry = self._entries.get(host_id)
            if entry is None or entry.terminated_at is not None:
                return entry
            entry = replace(entry, terminated_at=datetime.now(UTC))
            self._entries[host_id] = entry
            self._save()
            return entry

    def _load(self) -> dict[str, LedgerEntry]:
        assert self._path is not None
        try:
            raw = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as e:
            raise InvalidArgumentError(
                f"host ledger {self._path.name} is corrupt ({e}); restore it from a backup, "
                "or, if this agent runs no hosts, delete it"
            ) from e
        entries: dict[str, LedgerEntry] = {}
        for item in raw.get("hosts", []):
            ended = item.get("terminated_at")
            entry = LedgerEntry(
                host_id=item["host_id"],
                client_token=item["client_token"],
                instance_type=item["instance_type"],
                tags=dict(item["tags"]),
                launched_at=datetime.fromisoformat(item["launched_at"]),
                terminated_at=datetime.fromisoformat(ended) if ended else None,
                private_ip=item.get("private_ip"),
            )
            entries[entry.host_id] = entry
        return entries

    def _save(self) -> None:
        if self._path is None:
            return
        doc = {
            "version": _VERSION,
            "hosts": [
                {
                    "host_id": e.host_id,
                    "client_token": e.client_token,
                    "instance_type": e.instance_type,
                    "tags": dict(e.tags),
                    "launched_at": e.launched_at.isoformat(),
                    "terminated_at": e.terminated_at.isoformat() if e.terminated_at else None,
                    "private_ip": e.private_ip,
                }
                for e in self._entries.values()
            ],
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ledger-", dir=self._path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
