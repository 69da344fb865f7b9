"""What the OCPP adapter keeps on disk, and what it reads from the station's store.

:class:`OcppState` is the adapter's own SQLite file (``ocpp.sqlite3`` beside the station's
store; WAL, ``synchronous=FULL``): which OCPP transaction id the CSMS gave each of our sessions,
whether its stop was answered, and the configuration keys the CSMS changed. It is written the
moment a CSMS answer arrives, before anything else happens, so that a message the CSMS already
has is never sent twice (a ``StartTransaction`` after a restart would open a second transaction)
and a ``StopTransaction`` always carries the id the CSMS assigned, never -1.

:class:`StationView` reads the station's store (read-only connection, WAL readers never block
the writer): the session rows that hold the id tag and the meter readings, and the local list
version. Both belong to the adapter's network thread.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.clock import parse_rfc3339, rfc3339
from agent.errors import StoreError
from agent.messages import SessionEvent, SessionEventKind, SignedMeterValues

STATE_NAME = "ocpp.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tx (
    session_id     TEXT PRIMARY KEY,
    transaction_id TEXT NOT NULL,
    connector      INTEGER NOT NULL,
    stopped        INTEGER NOT NULL DEFAULT 0,
    started_at     TEXT NOT NULL,
    seq            INTEGER NOT NULL DEFAULT 1, -- 2.0.1: the next TransactionEvent seqNo
    refused        TEXT  -- the CSMS's idTag(Token)Info status when not Accepted: stop it
);
CREATE INDEX IF NOT EXISTS tx_by_id ON tx(transaction_id);
CREATE TABLE IF NOT EXISTS profiles (  -- 1.6 charging profiles (agent.ocpp_profiles)
    id          INTEGER PRIMARY KEY,
    connector   INTEGER NOT NULL,
    purpose     TEXT NOT NULL,
    stack_level INTEGER NOT NULL,
    body        TEXT NOT NULL  -- the csChargingProfiles as received (snake_case JSON)
);
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True, kw_only=True)
class TxRow:
    session_id: str
    transaction_id: str
    connector: int
    stopped: bool


class OcppState:
    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / STATE_NAME
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"{self._path}: not open")
        return self._db

    def open(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(tx)")}
            if "refused" not in columns:  # a file from before the column
                db.execute("ALTER TABLE tx ADD COLUMN refused TEXT")
        except sqlite3.Error as err:
            raise StoreError(f"{self._path}: cannot open: {err}") from err
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        try:
            self.db.execute(sql, params)  # autocommit: on disk when this returns
        except sqlite3.Error as err:
            raise StoreError(f"{self._path}: cannot write: {err}") from err

    def tx(self, session_id: str) -> TxRow | None:
        row = self.db.execute(
            "SELECT session_id, transaction_id, connector, stopped FROM tx WHERE session_id=?",
            (session_id,),
        ).fetchone()
        return None if row is None else TxRow(**_tx_fields(row))

    def by_transaction(self, transaction_id: str) -> TxRow | None:
        row = self.db.execute(
            "SELECT session_id, transaction_id, connector, stopped FROM tx"
            " WHERE transaction_id=? ORDER BY started_at DESC LIMIT 1",
            (transaction_id,),
        ).fetchone()
        return None if row is None else TxRow(**_tx_fields(row))

    def started(
        self,
        session_id: str,
        transaction_id: str,
        connector: int,
        at: datetime,
        refused: str | None = None,
    ) -> None:
        """The CSMS's answer to a transaction start, in one commit: its id and, when the id
        tag's status was not Accepted, that status (the session is then stopped, DeAuthorized)."""
        self._write(
            "INSERT OR REPLACE INTO tx (session_id, transaction_id, connector, started_at, refused)"
            " VALUES (?, ?, ?, ?, ?)",
            (session_id, transaction_id, connector, rfc3339(at), refused),
        )

    def refused_open(self) -> list[tuple[str, str]]:
        """(session id, status) of the transactions the CSMS refused whose stop is not answered
        yet: their deauthorisation is handed to the station again after a restart."""
        rows = self.db.execute(
            "SELECT session_id, refused FROM tx WHERE stopped=0 AND refused IS NOT NULL"
        ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def stopped(self, session_id: str) -> None:
        self._write("UPDATE tx SET stopped=1 WHERE session_id=?", (session_id,))

    def take_seq(self, session_id: str) -> int:
        """The next seqNo of a 2.0.1 transaction (0 was its Started), committed before the
        message goes out: a crash leaves a gap, never a number used twice for two messages."""
        row = self.db.execute("SELECT seq FROM tx WHERE session_id=?", (session_id,)).fetchone()
        seq = int(row[0]) if row else 1
        self._write("UPDATE tx SET seq=? WHERE session_id=?", (seq + 1, session_id))
        return seq

    def open_transactions(self) -> list[TxRow]:
        rows = self.db.execute(
            "SELECT session_id, transaction_id, connector, stopped FROM tx WHERE stopped=0"
        ).fetchall()
        return [TxRow(**_tx_fields(r)) for r in rows]

    def save_profile(
        self, profile_id: int, connector: int, purpose: str, stack_level: int, body: str
    ) -> None:
        """A profile replaces the one with its id and the one with its connector, purpose and
        stack level (OCPP 1.6), in one commit."""
        try:
            with self.db:
                self.db.execute("BEGIN")
                self.db.execute(
                    "DELETE FROM profiles WHERE id=? OR (connector=? AND purpose=? AND"
                    " stack_level=?)",
                    (profile_id, connector, purpose, stack_level),
                )
                self.db.execute(
                    "INSERT INTO profiles (id, connector, purpose, stack_level, body)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (profile_id, connector, purpose, stack_level, body),
                )
        except sqlite3.Error as err:
            raise StoreError(f"{self._path}: cannot write: {err}") from err

    def delete_profiles(
        self,
        *,
        profile_id: int | None = None,
        connector: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
    ) -> int:
        """ClearChargingProfile: by id, else by the criteria given (none: all); how many."""
        params: tuple[int | str, ...]
        if profile_id is not None:
            where, params = "id=?", (profile_id,)
        else:
            conds = [
                (col, val)
                for col, val in (
                    ("connector", connector),
                    ("purpose", purpose),
                    ("stack_level", stack_level),
                )
                if val is not None
            ]
            where = " AND ".join(f"{col}=?" for col, _ in conds) or "1"
            params = tuple(val for _, val in conds)
        try:
            cur = self.db.execute(f"DELETE FROM profiles WHERE {where}", params)
        except sqlite3.Error as err:
            raise StoreError(f"{self._path}: cannot write: {err}") from err
        return int(cur.rowcount)

    def profiles(self) -> list[tuple[int, str]]:
        rows = self.db.execute("SELECT connector, body FROM profiles ORDER BY id").fetchall()
        return [(int(r[0]), str(r[1])) for r in rows]

    def setting(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))


def _tx_fields(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "session_id": row[0],
        "transaction_id": str(row[1]),
        "connector": int(row[2]),
        "stopped": bool(row[3]),
    }


@dataclass(frozen=True, kw_only=True)
class SessionFacts:
    """What an OCPP transaction message needs from one of our sessions."""

    session_id: str
    evse_id: str
    token: dict[str, Any]
    state: str
    meter_start_kwh: float | None
    meter_last_kwh: float | None
    meter_last_at: datetime | None
    stop_reason: str | None
    charging_start: datetime | None = None

    @property
    def charged(self) -> bool:
        """The relay closed for this session (a transaction in OCPP's sense)."""
        return self.charging_start is not None


class StationView:
    """Read-only access to the station's store (the core owns and writes it)."""

    def __init__(self, db_path: Path) -> None:
        self._path = db_path
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self._db = sqlite3.connect(
                    f"file:{self._path}?mode=ro", uri=True, check_same_thread=False, timeout=5.0
                )
            except sqlite3.Error as err:
                raise StoreError(f"{self._path}: cannot open read-only: {err}") from err
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as err:
            raise StoreError(f"{self._path}: cannot read: {err}") from err

    _COLS = (
        "session_id, evse_id, token, state, meter_start_kwh, meter_last_kwh, meter_last_at,"
        " stop_reason, charging_start"
    )

    def session(self, session_id: str) -> SessionFacts | None:
        rows = self._rows(f"SELECT {self._COLS} FROM sessions WHERE session_id=?", (session_id,))
        return _facts(rows[0]) if rows else None

    def charging(self) -> list[SessionFacts]:
        rows = self._rows(f"SELECT {self._COLS} FROM sessions WHERE state='charging'")
        return [_facts(r) for r in rows]

    def started_event(self, session_id: str) -> SessionEvent | None:
        """The ``started`` event of a session that charged, rebuilt from the store: for a
        session whose own event never came (a crash between the commit of a start and its
        event), so that OCPP still hears of the transaction, first."""
        facts = self.session(session_id)
        if facts is None or facts.charging_start is None:
            return None
        return SessionEvent(
            session_id=session_id,
            evse_id=facts.evse_id,
            event=SessionEventKind.STARTED,
            ts=facts.charging_start,
        )

    def signed(self, session_id: str) -> SignedMeterValues | None:
        """The session's signed meter records as the core committed them (None: unsigned)."""
        rows = self._rows(
            "SELECT start_record, stop_record, public_key, error FROM signed_values"
            " WHERE session_id=?",
            (session_id,),
        )
        if not rows:
            return None
        start, stop, key, error = rows[0]
        return SignedMeterValues(start=start, stop=stop, public_key=key, error=error)

    def queued_events(self) -> int:
        """Session events the core has not yet seen acknowledged (or not yet deleted)."""
        return int(self._rows("SELECT COUNT(*) FROM event_queue")[0][0])

    def local_list_version(self) -> int:
        rows = self._rows("SELECT value FROM meta WHERE key='local_list_version'")
        return int(rows[0][0]) if rows else 0


def _facts(r: tuple[Any, ...]) -> SessionFacts:
    return SessionFacts(
        session_id=r[0],
        evse_id=r[1],
        token=json.loads(r[2]),
        state=r[3],
        meter_start_kwh=r[4],
        meter_last_kwh=r[5],
        meter_last_at=parse_rfc3339(r[6]) if r[6] else None,
        stop_reason=r[7],
        charging_start=parse_rfc3339(r[8]) if r[8] else None,
    )
