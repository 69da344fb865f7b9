"""SQLite store: sessions, the CDR outbox, replayed commands, EVSE settings.

WAL journal, ``synchronous=FULL``: a commit is on disk before the call returns. Every state that
matters is committed here before the outside world (relay, MQTT) is told. The connection belongs
to the daemon's main thread.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from agent import readings
from agent.clock import parse_rfc3339, rfc3339
from agent.errors import StoreError

log = logging.getLogger(__name__)

DB_NAME = "station-agent.sqlite3"
SCHEMA_VERSION = 7
MAX_ANSWERS = 10_000  # answered command ids kept for replay protection (the newest)

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE sessions (
        session_id      TEXT PRIMARY KEY,
        evse_id         TEXT NOT NULL,
        token           TEXT NOT NULL,        -- JSON; never a PIN
        contract_id     TEXT,
        state           TEXT NOT NULL CHECK (state IN ('authorized', 'charging', 'ended')),
        offline         INTEGER NOT NULL DEFAULT 0,
        session_start   TEXT NOT NULL,
        charging_start  TEXT,
        charging_end    TEXT,
        session_end     TEXT,
        meter_start_kwh REAL,
        meter_last_kwh  REAL,
        meter_last_at   TEXT,
        stop_reason     TEXT,
        boot_id         TEXT,
        updated_at      TEXT NOT NULL
    );
    CREATE INDEX sessions_open ON sessions(state) WHERE state != 'ended';
    CREATE TABLE outbox (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id      TEXT NOT NULL UNIQUE REFERENCES sessions(session_id),
        payload         TEXT NOT NULL,
        created_at      TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        last_attempt_at TEXT,
        acked_at        TEXT
    );
    CREATE INDEX outbox_pending ON outbox(seq) WHERE acked_at IS NULL;
    CREATE TABLE commands (
        command_id  TEXT PRIMARY KEY,
        response    TEXT NOT NULL,
        received_at TEXT NOT NULL
    );
    CREATE TABLE evse_settings (
        evse_id   TEXT PRIMARY KEY,
        available INTEGER NOT NULL
    );
    """,
    # v2: offline authorisation (local list, auth cache) and the queue of session events
    # that could not be published while the link was down.
    2: """
    CREATE TABLE local_list (
        token_key   TEXT PRIMARY KEY,     -- "rfid:<UID>" or "contract:<EMAID>"
        status      TEXT NOT NULL,
        contract_id TEXT,
        expires_at  TEXT
    );
    CREATE TABLE auth_cache (
        token_key   TEXT PRIMARY KEY,
        status      TEXT NOT NULL,
        contract_id TEXT,
        expires_at  TEXT,
        updated_at  TEXT NOT NULL
    );
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE event_queue (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        topic      TEXT NOT NULL,
        payload    TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    """,
    # v3: a replayed command_id is answered again only if it is the same command
    3: """
    ALTER TABLE commands ADD COLUMN digest TEXT;
    """,
    # v4: monotonic marks (seconds, comparable within one boot only: the row's boot_id) of the
    # session and charging start, so that a CDR's durations survive wall-clock steps
    4: """
    ALTER TABLE sessions ADD COLUMN mono_start REAL;
    ALTER TABLE sessions ADD COLUMN mono_charging_start REAL;
    """,
    # v5: retention by an age no wall-clock step can fake (the station's summed running time)
    5: """
    CREATE TABLE station_clock (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        runtime_s REAL NOT NULL
    );
    ALTER TABLE outbox ADD COLUMN acked_runtime REAL;
    ALTER TABLE sessions ADD COLUMN ended_runtime REAL;
    ALTER TABLE auth_cache ADD COLUMN updated_runtime REAL;
    """,
    # v6: signed meter records (OCMF), byte for byte as the meter gave them (agent/metering.py)
    6: """
    CREATE TABLE signed_values (
        session_id   TEXT PRIMARY KEY REFERENCES sessions(session_id) ON DELETE CASCADE,
        format       TEXT NOT NULL,
        start_record TEXT,
        stop_record  TEXT,
        public_key   TEXT,
        error        TEXT
    );
    """,
    # v7: meter readings per session, bounded (agent/readings.py): the status page's plot
    7: readings.MIGRATION,
}


@dataclass(frozen=True)
class SessionRow:
    session_id: str
    evse_id: str
    token: dict[str, Any]
    contract_id: str | None
    state: str
    offline: bool
    session_start: datetime
    charging_start: datetime | None
    charging_end: datetime | None
    session_end: datetime | None
    meter_start_kwh: float | None
    meter_last_kwh: float | None
    meter_last_at: datetime | None
    stop_reason: str | None
    boot_id: str | None
    updated_at: datetime
    mono_start: float | None = None  # monotonic clock at session start (same boot only)
    mono_charging_start: float | None = None  # monotonic clock at charging start


@dataclass(frozen=True)
class AuthEntry:
    """A local-list or auth-cache entry: what the station may decide on its own."""

    token_key: str
    status: str
    contract_id: str | None = None
    expires_at: datetime | None = None

    def valid(self, now: datetime) -> bool:
        return self.status == "accepted" and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    session_id: str
    payload: str
    created_at: datetime
    attempts: int
    last_attempt_at: datetime | None


def _ts(value: str | None) -> datetime | None:
    return None if value is None else parse_rfc3339(value)


class _Db:
    """The connection and the two ways through it: reads (any sqlite3 error becomes
    StoreError) and write transactions (:class:`_Transaction`)."""

    _db: sqlite3.Connection | None
    _monotonic: Callable[[], float]
    _runtime_base: float = 0.0  # running time up to _runtime_mark
    _runtime_mark: float | None = None  # monotonic time of the last checkpoint (None: closed)

    def runtime(self) -> float:
        """Seconds the station has run, summed over every run since the database was made: an
        age no wall-clock step can fake (it stands still only while the station is off)."""
        if self._runtime_mark is None:
            return self._runtime_base
        return self._runtime_base + max(0.0, self._monotonic() - self._runtime_mark)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    def _tx(self) -> _Transaction:
        """A write transaction: any sqlite3 error inside it becomes StoreError."""
        return _Transaction(self.db)

    def unit(self) -> _Transaction:
        """One commit for several writes: the store's own transactions inside it join it."""
        return _Transaction(self.db)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every read goes through here: any sqlite3 error becomes StoreError."""
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.Error as err:
            raise StoreError(f"store read failed: {err}") from err

    def _row(self, sql: str, params: Sequence[Any] = ()) -> Any | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _count(self, table: str) -> int:
        return int(self._rows(f"SELECT COUNT(*) FROM {table}")[0][0])


class _AuthTables(_Db):
    """The local list (the backend's, versioned) and the auth cache (earlier answers)."""

    # ------------------------------------------------------------------ offline authorisation
    def local_list_version(self) -> int:
        row = self._row("SELECT value FROM meta WHERE key='local_list_version'")
        return int(row[0]) if row else 0

    def local_list_size(self) -> int:
        return self._count("local_list")

    def replace_local_list(self, version: int, entries: list[AuthEntry], *, full: bool) -> None:
        """A full update replaces the list; a differential one upserts; both in one transaction."""
        with self._tx():
            if full:
                self.db.execute("DELETE FROM local_list")
            self.db.executemany(
                "INSERT INTO local_list (token_key, status, contract_id, expires_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(token_key) DO UPDATE SET"
                " status=excluded.status, contract_id=excluded.contract_id,"
                " expires_at=excluded.expires_at",
                [
                    (
                        e.token_key,
                        e.status,
                        e.contract_id,
                        rfc3339(e.expires_at) if e.expires_at else None,
                    )
                    for e in entries
                ],
            )
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES ('local_list_version', ?)"
                " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (str(version),),
            )

    def local_list_entries(self, limit: int = 1000) -> list[AuthEntry]:
        rows = self._rows(
            "SELECT token_key, status, contract_id, expires_at FROM local_list"
            " ORDER BY token_key LIMIT ?",
            (limit,),
        )
        return [AuthEntry(r[0], r[1], r[2], _ts(r[3])) for r in rows]

    def local_list_lookup(self, token_key: str) -> AuthEntry | None:
        r = self._row(
            "SELECT token_key, status, contract_id, expires_at FROM local_list WHERE token_key=?",
            (token_key,),
        )
        return None if r is None else AuthEntry(r[0], r[1], r[2], _ts(r[3]))

    def cache_lookup(self, token_key: str) -> AuthEntry | None:
        r = self._row(
            "SELECT token_key, status, contract_id, expires_at FROM auth_cache WHERE token_key=?",
            (token_key,),
        )
        return None if r is None else AuthEntry(r[0], r[1], r[2], _ts(r[3]))

    def cache_put(self, entry: AuthEntry, now: datetime, max_size: int) -> None:
        """Remember a backend answer; when full evict expired, then refused, then oldest."""
        with self._tx():
            self.db.execute(
                "INSERT INTO auth_cache (token_key, status, contract_id, expires_at, updated_at,"
                " updated_runtime) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(token_key) DO UPDATE SET"
                " status=excluded.status, contract_id=excluded.contract_id,"
                " expires_at=excluded.expires_at, updated_at=excluded.updated_at,"
                " updated_runtime=excluded.updated_runtime",
                (
                    entry.token_key,
                    entry.status,
                    entry.contract_id,
                    rfc3339(entry.expires_at) if entry.expires_at else None,
                    rfc3339(now),
                    self.runtime(),
                ),
            )
            excess = self.cache_size() - max_size
            if excess > 0:
                self.db.execute(
                    "DELETE FROM auth_cache WHERE token_key IN (SELECT token_key FROM auth_cache"
                    " ORDER BY (expires_at IS NOT NULL AND expires_at <= ?) DESC,"
                    " (status != 'accepted') DESC, updated_at ASC LIMIT ?)",
                    (rfc3339(now), excess),
                )

    def cache_size(self) -> int:
        return self._count("auth_cache")


class _StationTables(_AuthTables):
    """Command answers (for idempotence) and the station's settings (availability, limits)."""

    # ------------------------------------------------------------------ commands
    def command_response(self, command_id: str) -> tuple[str, str | None] | None:
        """The stored answer to a command id and the digest of the command it answered."""
        row = self._row("SELECT response, digest FROM commands WHERE command_id=?", (command_id,))
        return None if row is None else (str(row[0]), row[1])

    def save_command(
        self, command_id: str, response: str, ts: datetime, digest: str | None = None
    ) -> None:
        with self._tx():
            self.db.execute(
                "INSERT OR IGNORE INTO commands (command_id, response, received_at, digest)"
                " VALUES (?, ?, ?, ?)",
                (command_id, response, rfc3339(ts), digest),
            )
            # bounded by count, never by wall time (a clock step must not forget an answer)
            self.db.execute(
                "DELETE FROM commands WHERE rowid <= (SELECT MAX(rowid) FROM commands) - ?",
                (MAX_ANSWERS,),
            )

    # ------------------------------------------------------------------ settings
    def availability(self) -> dict[str, bool]:
        rows = self._rows("SELECT evse_id, available FROM evse_settings")
        return {r[0]: bool(r[1]) for r in rows}

    def set_availability(self, evse_id: str, available: bool) -> None:
        with self._tx():
            self.db.execute(
                "INSERT INTO evse_settings (evse_id, available) VALUES (?, ?)"
                " ON CONFLICT(evse_id) DO UPDATE SET available=excluded.available",
                (evse_id, int(available)),
            )

    def settings(self, prefix: str) -> dict[str, str]:
        """The ``meta`` entries whose key starts with ``prefix`` (e.g. current limits)."""
        rows = self._rows(
            "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
        )
        return {str(r[0]): str(r[1]) for r in rows}

    def set_setting(self, key: str, value: str | None) -> None:
        """Write (or with None delete) one ``meta`` entry, in the caller's unit if one is open."""
        with self._tx():
            if value is None:
                self.db.execute("DELETE FROM meta WHERE key=?", (key,))
            else:
                self.db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (key, value),
                )


class Store(_StationTables):
    def __init__(
        self,
        state_dir: Path,
        max_kb: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = state_dir / DB_NAME
        self._monotonic = monotonic
        self._max_kb = max_kb
        self._db: sqlite3.Connection | None = None
        self.quarantined: Path | None = None  # where a corrupt database was moved to
        self._outbox_stats: tuple[int, datetime | None] | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the open file

    # ------------------------------------------------------------------ lifecycle
    def open(self, now: datetime | None = None) -> None:
        """Open (creating or upgrading) the database.

        A file that is not a readable SQLite database, or fails its integrity check, is moved
        aside as ``<name>.corrupt-<timestamp>`` with a loud error and a fresh database is
        created: never silently overwritten, never silently used.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create state directory {self.path.parent}: {err}") from err
        try:
            self._connect()
        except sqlite3.DatabaseError as err:
            self.close()
            if isinstance(err, sqlite3.OperationalError) and not _looks_corrupt(err):
                raise StoreError(f"cannot open store {self.path}: {err}") from err
            self.quarantined = _quarantine(self.path, err, now)
            try:
                self._connect()
            except sqlite3.Error as err2:
                raise StoreError(f"cannot create a fresh store {self.path}: {err2}") from err2
        except StoreError:
            self.close()
            raise

    def _connect(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        self._db = db
        self._outbox_stats = None
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        if self._max_kb is not None:
            page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            db.execute(f"PRAGMA max_page_count = {max(1, self._max_kb * 1024 // page_size)}")
        row = db.execute("PRAGMA quick_check").fetchone()
        if not row or row[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {row[0] if row else '?'}")
        _migrate(db, self.path)
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        row = db.execute("SELECT runtime_s FROM station_clock WHERE id=1").fetchone()
        self._runtime_base = float(row[0]) if row else 0.0
        self._runtime_mark = self._monotonic()

    def checkpoint_runtime(self) -> None:
        """Persist the running time (at most the time since the last checkpoint is lost to a
        crash: data is then kept that much longer, never purged early)."""
        runtime, mark = self.runtime(), self._monotonic()
        with self._tx():
            self.db.execute(
                "INSERT INTO station_clock (id, runtime_s) VALUES (1, ?)"
                " ON CONFLICT(id) DO UPDATE SET runtime_s=excluded.runtime_s",
                (runtime,),
            )
        self._runtime_base, self._runtime_mark = runtime, mark

    def check_file(self) -> None:
        """The database file is still the one that was opened: a deleted or replaced state
        directory is a store failure now, not a lost CDR at the next start."""
        try:
            st = os.stat(self.path)
        except OSError as err:
            raise StoreError(
                f"{self.path} is gone ({err.strerror}): the state was deleted"
            ) from err
        if self._identity is not None and (st.st_dev, st.st_ino) != self._identity:
            raise StoreError(f"{self.path} was replaced by another file while open")

    def close(self) -> None:
        if self._db is not None:
            try:
                self.checkpoint_runtime()
            except StoreError as err:
                log.error("running time not saved at close: %s", err)
            self._db.close()
            self._db = None
            self._runtime_mark = None

    def integrity_ok(self) -> bool:
        try:
            row = self.db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.Error:
            return False
        return bool(row and row[0] == "ok")

    # ------------------------------------------------------------------ sessions
    def insert_session(
        self,
        *,
        session_id: str,
        evse_id: str,
        token: dict[str, Any],
        contract_id: str | None,
        start: datetime,
        offline: bool = False,
        boot_id: str | None = None,
        meter_kwh: float | None = None,
        mono: float | None = None,
    ) -> None:
        """A new authorised session; with ``meter_kwh`` it is charging from ``start`` on (one
        commit instead of two before the relay closes). ``mono``: the monotonic clock at
        ``start`` (durations in the CDR come from it, not from the wall clock)."""
        if "pin" in token:
            raise StoreError("refusing to store a PIN")
        charging = meter_kwh is not None
        with self._tx():
            self.db.execute(
                "INSERT INTO sessions (session_id, evse_id, token, contract_id, state, offline,"
                " session_start, boot_id, updated_at, charging_start, meter_start_kwh,"
                " meter_last_kwh, meter_last_at, mono_start, mono_charging_start)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    evse_id,
                    json.dumps(token, sort_keys=True),
                    contract_id,
                    "charging" if charging else "authorized",
                    int(offline),
                    rfc3339(start),
                    boot_id,
                    rfc3339(start),
                    rfc3339(start) if charging else None,
                    meter_kwh,
                    meter_kwh,
                    rfc3339(start) if charging else None,
                    mono,
                    mono if charging else None,
                ),
            )
            if meter_kwh is not None:
                readings.add(self.db, session_id, start, meter_kwh)

    def mark_charging(
        self,
        session_id: str,
        ts: datetime,
        meter_kwh: float,
        *,
        evse_id: str | None = None,
        mono: float | None = None,
    ) -> None:
        """Charging started (on ``evse_id``, which may differ for a floating authorisation);
        ``mono``: the monotonic clock at ``ts``."""
        with self._tx():
            self.db.execute(
                "UPDATE sessions SET state='charging', charging_start=?, meter_start_kwh=?,"
                " meter_last_kwh=?, meter_last_at=?, updated_at=?, evse_id=COALESCE(?, evse_id),"
                " mono_charging_start=? WHERE session_id=?",
                (
                    rfc3339(ts),
                    meter_kwh,
                    meter_kwh,
                    rfc3339(ts),
                    rfc3339(ts),
                    evse_id,
                    mono,
                    session_id,
                ),
            )
            readings.add(self.db, session_id, ts, meter_kwh)

    def record_meter(self, session_id: str, ts: datetime, meter_kwh: float) -> None:
        with self._tx():
            updated = self.db.execute(
                "UPDATE sessions SET meter_last_kwh=?, meter_last_at=?, updated_at=?"
                " WHERE session_id=? AND state='charging'",
                (meter_kwh, rfc3339(ts), rfc3339(ts), session_id),
            ).rowcount
            if updated:
                readings.add(self.db, session_id, ts, meter_kwh)

    def end_session(
        self,
        session_id: str,
        *,
        end: datetime,
        reason: str,
        meter_stop_kwh: float | None = None,
        cdr_payload: str | None = None,
    ) -> None:
        """End a session and queue its CDR in one transaction."""
        with self._tx():
            self.db.execute(
                "UPDATE sessions SET state='ended', session_end=?, stop_reason=?,"
                " charging_end=CASE WHEN charging_start IS NOT NULL THEN ? END,"
                " meter_last_kwh=COALESCE(?, meter_last_kwh), updated_at=?, ended_runtime=?"
                " WHERE session_id=?",
                (
                    rfc3339(end),
                    reason,
                    rfc3339(end),
                    meter_stop_kwh,
                    rfc3339(end),
                    self.runtime(),
                    session_id,
                ),
            )
            if meter_stop_kwh is not None:
                readings.add(self.db, session_id, end, meter_stop_kwh)
            if cdr_payload is not None:
                self._outbox_stats = None
                self.db.execute(
                    "INSERT INTO outbox (session_id, payload, created_at) VALUES (?, ?, ?)",
                    (session_id, cdr_payload, rfc3339(end)),
                )

    def get_session(self, session_id: str) -> SessionRow | None:
        row = self._row(f"SELECT {_SESSION_COLS} FROM sessions WHERE session_id=?", (session_id,))
        return None if row is None else _session(row)

    def session_readings(self, session_id: str) -> list[tuple[str, float]]:
        """The session's committed meter readings ``(ts, energy_kwh)``, oldest first."""
        rows = self._rows(
            "SELECT ts, energy_kwh FROM meter_readings WHERE session_id=? ORDER BY rowid",
            (session_id,),
        )
        return [(str(ts), float(kwh)) for ts, kwh in rows]

    def cdr_payload(self, session_id: str) -> tuple[str, str | None] | None:
        """The session's CDR as queued ``(payload, acked_at)``, while the outbox keeps it."""
        row = self._row("SELECT payload, acked_at FROM outbox WHERE session_id=?", (session_id,))
        return None if row is None else (str(row[0]), row[1])

    def count_sessions(self) -> int:
        return self._count("sessions")

    def sessions_page(self, offset: int, limit: int) -> list[SessionRow]:
        """Sessions newest first, ``limit`` of them after skipping ``offset``."""
        rows = self._rows(
            f"SELECT {_SESSION_COLS} FROM sessions ORDER BY session_start DESC, rowid DESC"
            " LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [_session(r) for r in rows]

    def open_sessions(self) -> list[SessionRow]:
        rows = self._rows(
            f"SELECT {_SESSION_COLS} FROM sessions WHERE state != 'ended' ORDER BY session_start"
        )
        return [_session(r) for r in rows]

    def recent_sessions(self, limit: int = 50) -> list[SessionRow]:
        rows = self._rows(
            f"SELECT {_SESSION_COLS} FROM sessions ORDER BY session_start DESC, rowid DESC LIMIT ?",
            (limit,),
        )
        return [_session(r) for r in rows]

    # ------------------------------------------------------------------ outbox
    def pending_cdrs(self, limit: int = 100) -> list[OutboxEntry]:
        rows = self._rows(
            "SELECT seq, session_id, payload, created_at, attempts, last_attempt_at FROM outbox"
            " WHERE acked_at IS NULL ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [OutboxEntry(r[0], r[1], r[2], parse_rfc3339(r[3]), r[4], _ts(r[5])) for r in rows]

    def mark_attempt(self, session_id: str, ts: datetime) -> None:
        with self._tx():
            self.db.execute(
                "UPDATE outbox SET attempts=attempts+1, last_attempt_at=? WHERE session_id=?",
                (rfc3339(ts), session_id),
            )

    def ack_cdr(self, session_id: str, ts: datetime) -> str:
        """Returns 'acked', 'duplicate' (already acked) or 'unknown'."""
        with self._tx():
            row = self._row("SELECT acked_at FROM outbox WHERE session_id=?", (session_id,))
            if row is None:
                return "unknown"
            if row[0] is not None:
                return "duplicate"
            self._outbox_stats = None
            self.db.execute(
                "UPDATE outbox SET acked_at=?, acked_runtime=? WHERE session_id=?",
                (rfc3339(ts), self.runtime(), session_id),
            )
            return "acked"

    def outbox_stats(self) -> tuple[int, datetime | None]:
        """Pending CDRs and the oldest one's time (cached: status is built after every event)."""
        if self._outbox_stats is None:
            sql = "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE acked_at IS NULL"
            row = self._rows(sql)[0]  # an aggregate always has one row
            self._outbox_stats = (int(row[0]), _ts(row[1]))
        return self._outbox_stats

    # ------------------------------------------------------------------ event queue
    def queue_event(self, topic: str, payload: str, ts: datetime) -> None:
        """A message that could not be published now; sent in order when the link returns."""
        with self._tx():
            self.db.execute(
                "INSERT INTO event_queue (topic, payload, created_at) VALUES (?, ?, ?)",
                (topic, payload, rfc3339(ts)),
            )

    def queued_events(self, limit: int = 1000, after: int = 0) -> list[tuple[int, str, str]]:
        """Queued events oldest first, those with a sequence number above ``after``."""
        rows = self._rows(
            "SELECT seq, topic, payload FROM event_queue WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def drop_events(self, seqs: list[int]) -> None:
        """Sent: forget them, in one transaction."""
        with self._tx():
            self.db.executemany("DELETE FROM event_queue WHERE seq=?", [(s,) for s in seqs])

    def queued_event_count(self) -> int:
        return self._count("event_queue")

    # ------------------------------------------------------------------ retention
    def purge(self, now: datetime, retention_days: int) -> dict[str, int]:
        """Delete acknowledged CDRs, ended sessions and cached answers older than the retention
        (answered commands are bounded by count instead: :data:`MAX_ANSWERS`).

        Undelivered CDRs (and their sessions) are kept until delivered, however old. The age is
        the wall-clock age or the station's running time since then (:meth:`runtime`),
        whichever is larger: a clock stepped back cannot keep data beyond the retention.
        """
        cutoff = rfc3339(now - timedelta(days=retention_days))
        ran = self.runtime() - retention_days * 86400.0
        self._outbox_stats = None
        with self._tx():
            cdrs = self.db.execute(
                "DELETE FROM outbox WHERE acked_at IS NOT NULL"
                " AND (acked_at < ? OR acked_runtime < ?)",
                (cutoff, ran),
            ).rowcount
            sessions = self.db.execute(
                "DELETE FROM sessions WHERE state='ended'"
                " AND (session_end < ? OR ended_runtime < ?)"
                " AND session_id NOT IN (SELECT session_id FROM outbox)",
                (cutoff, ran),
            ).rowcount
            cache = self.db.execute(
                "DELETE FROM auth_cache WHERE updated_at < ? OR updated_runtime < ?", (cutoff, ran)
            ).rowcount
            readings.purge_orphans(self.db)
        return {"cdrs": cdrs, "sessions": sessions, "auth_cache": cache}


_SESSION_COLS = (
    "session_id, evse_id, token, contract_id, state, offline, session_start, charging_start,"
    " charging_end, session_end, meter_start_kwh, meter_last_kwh, meter_last_at, stop_reason,"
    " boot_id, updated_at, mono_start, mono_charging_start"
)


def _session(r: tuple[Any, ...]) -> SessionRow:
    return SessionRow(
        session_id=r[0],
        evse_id=r[1],
        token=json.loads(r[2]),
        contract_id=r[3],
        state=r[4],
        offline=bool(r[5]),
        session_start=parse_rfc3339(r[6]),
        charging_start=_ts(r[7]),
        charging_end=_ts(r[8]),
        session_end=_ts(r[9]),
        meter_start_kwh=r[10],
        meter_last_kwh=r[11],
        meter_last_at=_ts(r[12]),
        stop_reason=r[13],
        boot_id=r[14],
        updated_at=parse_rfc3339(r[15]),
        mono_start=r[16],
        mono_charging_start=r[17],
    )


def _looks_corrupt(err: sqlite3.Error) -> bool:
    text = str(err).lower()
    return any(w in text for w in ("not a database", "malformed", "corrupt", "integrity"))


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script (comments removed first; no ';' inside literals)."""
    text = "\n".join(ln.split("--", 1)[0] for ln in script.splitlines())
    return [stmt.strip() for stmt in text.split(";") if stmt.strip()]


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION in one transaction; refuse a newer one."""
    current = int(db.execute("PRAGMA user_version").fetchone()[0])
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {current}, newer than this agent's "
            f"{SCHEMA_VERSION}: refusing to touch it"
        )
    if current == SCHEMA_VERSION:
        return
    with _Transaction(db):
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for stmt in _split_sql(_MIGRATIONS[version]):
                db.execute(stmt)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    log.info("store %s migrated from schema %d to %d", path, current, SCHEMA_VERSION)


def _quarantine(path: Path, err: Exception, now: datetime | None) -> Path:
    """Move an unreadable database (and its WAL/SHM files) aside; returns where to."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, Path(f"{target}{suffix}"))
    log.critical(
        "store %s is unreadable (%s): moved aside to %s and starting with an empty store; "
        "pending CDRs in it must be recovered by hand",
        path,
        err,
        target,
    )
    return target


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error; sqlite errors become StoreError."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._joined = False  # inside an open transaction: the outer one commits

    def __enter__(self) -> None:
        try:
            self._joined = self._db.in_transaction
            if self._joined:
                return
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise StoreError(f"cannot begin transaction: {err}") from err

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> Literal[False]:
        if self._joined:  # the outer transaction commits or rolls back
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"store write failed: {exc}") from exc
            return False
        if exc is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback(err)
                raise StoreError(f"commit failed: {err}") from err
            return False
        self._rollback(exc)
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"store write failed: {exc}") from exc
        return False

    def _rollback(self, cause: BaseException) -> None:
        """Roll back what is left; SQLite may already have rolled back itself (disk full)."""
        if not self._db.in_transaction:
            return
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error as rb_err:
            log.error("rollback failed after %s: %s", cause, rb_err)
