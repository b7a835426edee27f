"""Per-session Explain results, kept small, for a while, for a bounded number of sessions.

A browser session's `gr.State` holds only a key; the report behind it lives here, slimmed to what re-plotting
needs (`Report.for_replotting`), until `ttl` seconds after its last use or until `max_sessions` newer sessions
push it out. A visitor whose report has gone is asked to press Explain again.
"""

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

MAX_SESSIONS = 32
TTL_SECONDS = 30 * 60


@dataclass
class StoredReport:
    """A slimmed report, and its written report files once asked for."""

    report: object
    files: list[str] | None = None  # the written HTML and JSON, once the Report tab asked for them
    used: float = 0.0


class ReportStore:
    def __init__(self, max_sessions: int = MAX_SESSIONS, ttl: float = TTL_SECONDS, clock=time.monotonic):
        self.max_sessions, self.ttl, self.clock = max_sessions, ttl, clock
        self.entries: OrderedDict[str, StoredReport] = OrderedDict()
        self.lock = threading.Lock()

    def put(self, report, replaces: str | None = None) -> str:
        """Keep `report.for_replotting()` under a new key, dropping the session's previous report (`replaces`)."""
        entry = StoredReport(report.for_replotting(), used=self.clock())
        key = secrets.token_hex(16)
        with self.lock:
            self.entries.pop(replaces, None)
            self.expire()
            self.entries[key] = entry
            while len(self.entries) > self.max_sessions:
                self.entries.popitem(last=False)
        return key

    def drop(self, key: str | None) -> None:
        with self.lock:
            self.entries.pop(key, None)

    def get(self, key: str | None) -> StoredReport | None:
        """The stored report, or None if there is none (never explained, expired or pushed out)."""
        with self.lock:
            self.expire()
            entry = self.entries.get(key) if key else None
            if entry is not None:
                entry.used = self.clock()
                self.entries.move_to_end(key)
            return entry

    def expire(self) -> None:
        deadline = self.clock() - self.ttl
        while self.entries and next(iter(self.entries.values())).used < deadline:
            self.entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self.entries)
