"""Meter readings per session (store schema v6): the points of the status page's session plot.

Every reading the daemon commits for a session (start, every ``store.meter_interval_s`` while
charging, stop) is also kept as a row ``(session_id, ts, energy_kwh)``, in the same transaction
as the session's own update. The table is bounded per session: once a session has more than
:data:`MAX_PER_SESSION` rows, every second row between the first and the last is dropped, so a
very long session keeps its whole span at half the resolution instead of losing its start.
Rows of purged sessions go with them (:func:`purge_orphans`).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from agent.clock import rfc3339

MAX_PER_SESSION = 1000

MIGRATION = """
CREATE TABLE meter_readings (
    session_id TEXT NOT NULL,
    ts         TEXT NOT NULL,
    energy_kwh REAL NOT NULL
);
CREATE INDEX meter_readings_session ON meter_readings(session_id);
"""


def add(db: sqlite3.Connection, session_id: str, ts: datetime, energy_kwh: float) -> None:
    """One reading (call inside the caller's transaction); thins the session's rows when full."""
    db.execute(
        "INSERT INTO meter_readings (session_id, ts, energy_kwh) VALUES (?, ?, ?)",
        (session_id, rfc3339(ts), energy_kwh),
    )
    (count,) = db.execute(
        "SELECT COUNT(*) FROM meter_readings WHERE session_id=?", (session_id,)
    ).fetchone()
    if count > MAX_PER_SESSION:
        thin(db, session_id)


def thin(db: sqlite3.Connection, session_id: str) -> None:
    """Drop every second row of a session, keeping its first and its last."""
    rows = [
        r[0]
        for r in db.execute(
            "SELECT rowid FROM meter_readings WHERE session_id=? ORDER BY rowid", (session_id,)
        )
    ]
    drop = rows[1:-1:2]
    db.executemany("DELETE FROM meter_readings WHERE rowid=?", [(r,) for r in drop])


def purge_orphans(db: sqlite3.Connection) -> int:
    """Delete the readings of sessions that are gone (call inside the purge's transaction)."""
    return db.execute(
        "DELETE FROM meter_readings WHERE session_id NOT IN (SELECT session_id FROM sessions)"
    ).rowcount
