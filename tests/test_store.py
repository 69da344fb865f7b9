"""agent.store against real SQLite files in a temporary directory."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.clock import rfc3339
from agent.errors import StoreError
from agent.store import _MIGRATIONS, DB_NAME, SCHEMA_VERSION, AuthEntry, Store, _split_sql

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
EVSE_1 = "DE*ICE*E000001*1"
EVSE_2 = "DE*ICE*E000001*2"
RFID = {"type": "rfid", "uid": "04A224B2C13C80"}


def sid(n: int) -> str:
    return f"aaaaaaaa-0000-4000-8000-{n:012d}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state")
    s.open()
    yield s
    s.close()


def reopen(store: Store) -> Store:
    store.close()
    again = Store(store.path.parent)
    again.open()
    return again


def cdr_payload(session_id: str, energy: float = 1.5) -> str:
    return json.dumps({"v": 1, "session_id": session_id, "energy_kwh": energy})


def charged_session(
    store: Store,
    session_id: str,
    start: datetime,
    *,
    end: datetime | None = None,
    cdr: bool = True,
    evse_id: str = EVSE_1,
) -> None:
    """A whole session: authorised, charging, one meter reading, ended (with a CDR)."""
    store.insert_session(
        session_id=session_id, evse_id=evse_id, token=RFID, contract_id=None, start=start
    )
    store.mark_charging(session_id, start + timedelta(seconds=5), 100.0)
    store.record_meter(session_id, start + timedelta(minutes=30), 105.5)
    if end is not None:
        store.end_session(
            session_id,
            end=end,
            reason="local",
            meter_stop_kwh=111.0,
            cdr_payload=cdr_payload(session_id) if cdr else None,
        )


def test_schema_version_wal_and_synchronous_full(store: Store) -> None:
    assert store.path.name == DB_NAME
    assert store.path.is_file()
    assert SCHEMA_VERSION >= 1
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"sessions", "outbox", "commands", "evse_settings"} <= tables
    assert store.integrity_ok()
    # an independent connection sees the same schema version (it was committed)
    other = sqlite3.connect(store.path)
    try:
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent
    finally:
        other.close()


def test_closed_store_raises(tmp_path: Path) -> None:
    s = Store(tmp_path)
    with pytest.raises(StoreError, match="not open"):
        s.open_sessions()


def test_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="state directory"):
        Store(blocker / "state").open()


def test_session_lifecycle_and_cdr(store: Store) -> None:
    s1 = sid(1)
    store.insert_session(
        session_id=s1,
        evse_id=EVSE_1,
        token=RFID,
        contract_id="DE8ACC12345678",
        start=T0,
        boot_id="boot-1",
    )
    row = store.get_session(s1)
    assert row is not None
    assert (row.state, row.evse_id, row.token, row.contract_id) == (
        "authorized",
        EVSE_1,
        RFID,
        "DE8ACC12345678",
    )
    assert row.session_start == T0 and row.charging_start is None and row.boot_id == "boot-1"
    assert [r.session_id for r in store.open_sessions()] == [s1]

    # a floating authorisation may charge on another EVSE
    store.mark_charging(s1, T0 + timedelta(seconds=10), 1520.25, evse_id=EVSE_2)
    row = store.get_session(s1)
    assert row is not None
    assert (row.state, row.evse_id, row.meter_start_kwh, row.meter_last_kwh) == (
        "charging",
        EVSE_2,
        1520.25,
        1520.25,
    )
    assert row.charging_start == T0 + timedelta(seconds=10)

    store.record_meter(s1, T0 + timedelta(minutes=1), 1521.0)
    row = store.get_session(s1)
    assert row is not None
    assert row.meter_last_kwh == 1521.0 and row.meter_last_at == T0 + timedelta(minutes=1)

    end = T0 + timedelta(minutes=2)
    store.end_session(
        s1, end=end, reason="local", meter_stop_kwh=1521.5, cdr_payload=cdr_payload(s1)
    )
    row = store.get_session(s1)
    assert row is not None
    assert (row.state, row.stop_reason, row.meter_last_kwh) == ("ended", "local", 1521.5)
    assert row.session_end == end and row.charging_end == end
    assert store.open_sessions() == []
    pending = store.pending_cdrs()
    assert [(p.session_id, p.payload, p.created_at, p.attempts) for p in pending] == [
        (s1, cdr_payload(s1), end, 0)
    ]
    # meter readings after the end do not change an ended session
    store.record_meter(s1, end + timedelta(minutes=1), 9999.0)
    row = store.get_session(s1)
    assert row is not None and row.meter_last_kwh == 1521.5


def test_session_that_never_charged_has_no_charging_end(store: Store) -> None:
    store.insert_session(session_id=sid(1), evse_id=EVSE_1, token=RFID, contract_id=None, start=T0)
    store.end_session(sid(1), end=T0 + timedelta(seconds=60), reason="connection_timeout")
    row = store.get_session(sid(1))
    assert row is not None
    assert row.state == "ended" and row.charging_start is None and row.charging_end is None
    assert store.pending_cdrs() == []


def test_end_session_is_one_transaction(store: Store) -> None:
    """If queueing the CDR fails, the session is not ended either."""
    s1 = sid(1)
    charged_session(store, s1, T0)
    # simulate a failure inside end_session's transaction: the outbox row already exists
    store.db.execute(
        "INSERT INTO outbox (session_id, payload, created_at) VALUES (?, 'old', ?)",
        (s1, rfc3339(T0)),
    )
    with pytest.raises(StoreError, match="UNIQUE"):
        store.end_session(
            s1,
            end=T0 + timedelta(hours=1),
            reason="local",
            meter_stop_kwh=111.0,
            cdr_payload=cdr_payload(s1),
        )
    row = store.get_session(s1)
    assert row is not None
    assert row.state == "charging"
    assert row.session_end is None and row.stop_reason is None and row.charging_end is None
    assert row.meter_last_kwh == 105.5
    assert [(p.session_id, p.payload) for p in store.pending_cdrs()] == [(s1, "old")]
    assert [r.session_id for r in store.open_sessions()] == [s1]
    # the connection is usable afterwards (no transaction left open)
    assert not store.db.in_transaction
    store.record_meter(s1, T0 + timedelta(hours=2), 107.0)
    row = store.get_session(s1)
    assert row is not None and row.meter_last_kwh == 107.0


def test_end_session_of_unknown_session_with_cdr_fails_and_writes_nothing(store: Store) -> None:
    with pytest.raises(StoreError):
        store.end_session(sid(9), end=T0, reason="local", cdr_payload=cdr_payload(sid(9)))
    assert store.pending_cdrs() == []
    assert store.outbox_stats() == (0, None)


def test_duplicate_session_id_is_refused(store: Store) -> None:
    charged_session(store, sid(1), T0)
    with pytest.raises(StoreError):
        store.insert_session(
            session_id=sid(1), evse_id=EVSE_2, token=RFID, contract_id=None, start=T0
        )
    row = store.get_session(sid(1))
    assert row is not None and row.evse_id == EVSE_1 and row.state == "charging"


def test_insert_session_refuses_a_pin(store: Store) -> None:
    token = {"type": "qr", "contract_id": "DE8ACC12345678", "pin": "1234"}
    with pytest.raises(StoreError, match="PIN"):
        store.insert_session(
            session_id=sid(1), evse_id=EVSE_1, token=token, contract_id=None, start=T0
        )
    assert store.get_session(sid(1)) is None
    n = store.db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    assert n == 0
    # without the PIN it is stored
    del token["pin"]
    store.insert_session(session_id=sid(1), evse_id=EVSE_1, token=token, contract_id=None, start=T0)
    row = store.get_session(sid(1))
    assert row is not None and row.token == {"type": "qr", "contract_id": "DE8ACC12345678"}


def test_outbox_is_oldest_first_and_ack(store: Store) -> None:
    for n in (3, 1, 2):  # session ids not in order: the order is the order of ending
        charged_session(store, sid(n), T0 + timedelta(minutes=n), end=T0 + timedelta(hours=n))
    assert [p.session_id for p in store.pending_cdrs()] == [sid(3), sid(1), sid(2)]
    assert [p.session_id for p in store.pending_cdrs(limit=2)] == [sid(3), sid(1)]
    seqs = [p.seq for p in store.pending_cdrs()]
    assert seqs == sorted(seqs)
    assert store.outbox_stats() == (3, T0 + timedelta(hours=1))

    store.mark_attempt(sid(1), T0 + timedelta(hours=5))
    store.mark_attempt(sid(1), T0 + timedelta(hours=6))
    entry = next(p for p in store.pending_cdrs() if p.session_id == sid(1))
    assert entry.attempts == 2 and entry.last_attempt_at == T0 + timedelta(hours=6)

    assert store.ack_cdr(sid(1), T0 + timedelta(hours=7)) == "acked"
    assert store.ack_cdr(sid(1), T0 + timedelta(hours=8)) == "duplicate"
    assert store.ack_cdr(sid(99), T0 + timedelta(hours=8)) == "unknown"
    assert store.ack_cdr(sid(3), T0 + timedelta(hours=8)) == "acked"
    assert [p.session_id for p in store.pending_cdrs()] == [sid(2)]
    assert store.outbox_stats() == (1, T0 + timedelta(hours=2))
    # the first ack's time is kept (a duplicate does not overwrite it)
    acked = store.db.execute(
        "SELECT acked_at FROM outbox WHERE session_id=?", (sid(1),)
    ).fetchone()[0]
    assert acked == rfc3339(T0 + timedelta(hours=7))
    assert store.ack_cdr(sid(2), T0 + timedelta(hours=9)) == "acked"
    assert store.outbox_stats() == (0, None)
    assert store.pending_cdrs() == []


def test_purge_keeps_undelivered_and_recent(store: Store) -> None:
    now = T0 + timedelta(days=400)
    old = now - timedelta(days=200)
    recent = now - timedelta(days=10)
    # 1: ended long ago, CDR never acknowledged -> kept, however old
    charged_session(store, sid(1), old, end=old + timedelta(hours=1))
    # 2: ended long ago, acked long ago -> CDR and session purged
    charged_session(store, sid(2), old, end=old + timedelta(hours=1))
    store.ack_cdr(sid(2), old + timedelta(hours=2))
    # 3: ended recently, acked recently -> kept
    charged_session(store, sid(3), recent, end=recent + timedelta(hours=1))
    store.ack_cdr(sid(3), recent + timedelta(hours=2))
    # 4: ended long ago without a CDR (never charged) -> purged
    store.insert_session(session_id=sid(4), evse_id=EVSE_1, token=RFID, contract_id=None, start=old)
    store.end_session(sid(4), end=old + timedelta(minutes=1), reason="connection_timeout")
    # 5: still open from long ago (a crash) -> kept
    charged_session(store, sid(5), old)
    # 6: ended long ago, CDR delivered only recently -> kept until its ack is old
    charged_session(store, sid(6), old, end=old + timedelta(hours=1))
    store.ack_cdr(sid(6), recent)
    # 7: recently ended without a CDR -> kept
    store.insert_session(
        session_id=sid(7), evse_id=EVSE_1, token=RFID, contract_id=None, start=recent
    )
    store.end_session(sid(7), end=recent + timedelta(minutes=1), reason="rejected")
    store.save_command("cmd-old", '{"status":"accepted"}', now - timedelta(days=91))
    store.save_command("cmd-new", '{"status":"accepted"}', now - timedelta(days=89))

    counts = store.purge(now, retention_days=90)
    assert {k: counts[k] for k in ("cdrs", "sessions")} == {"cdrs": 1, "sessions": 2}
    assert "commands" not in counts  # answers are bounded by count, never purged by wall time

    remaining = {r[0] for r in store.db.execute("SELECT session_id FROM sessions")}
    assert remaining == {sid(1), sid(3), sid(5), sid(6), sid(7)}
    outbox = {r[0] for r in store.db.execute("SELECT session_id FROM outbox")}
    assert outbox == {sid(1), sid(3), sid(6)}
    assert [p.session_id for p in store.pending_cdrs()] == [sid(1)]
    assert store.command_response("cmd-old") == ('{"status":"accepted"}', None)
    assert store.command_response("cmd-new") == ('{"status":"accepted"}', None)
    # nothing more to do on a second run
    assert not any(store.purge(now, retention_days=90).values())
    # a later purge removes what has since aged out, but still not the undelivered CDR
    later = now + timedelta(days=100)
    store.purge(later, retention_days=90)
    assert {r[0] for r in store.db.execute("SELECT session_id FROM sessions")} == {sid(1), sid(5)}
    assert [p.session_id for p in store.pending_cdrs()] == [sid(1)]


def test_command_replay(store: Store) -> None:
    assert store.command_response("cmd-1") is None
    first = '{"v":1,"command_id":"cmd-1","status":"accepted"}'
    store.save_command("cmd-1", first, T0, "digest-1")
    assert store.command_response("cmd-1") == (first, "digest-1")
    # a replay does not overwrite the first answer
    store.save_command("cmd-1", '{"v":1,"command_id":"cmd-1","status":"rejected"}', T0, "d2")
    assert store.command_response("cmd-1") == (first, "digest-1")
    assert store.command_response("cmd-2") is None


def test_availability_persists(store: Store) -> None:
    assert store.availability() == {}
    store.set_availability(EVSE_1, False)
    store.set_availability(EVSE_2, True)
    store.set_availability(EVSE_2, False)
    store.set_availability(EVSE_1, True)
    assert store.availability() == {EVSE_1: True, EVSE_2: False}
    again = reopen(store)
    try:
        assert again.availability() == {EVSE_1: True, EVSE_2: False}
    finally:
        again.close()


def test_reopen_keeps_everything(store: Store) -> None:
    charged_session(store, sid(1), T0, end=T0 + timedelta(hours=1))
    charged_session(store, sid(2), T0 + timedelta(hours=2))
    store.save_command("cmd-1", "resp", T0)
    store.set_availability(EVSE_2, False)
    before_sessions = [store.get_session(sid(1)), store.get_session(sid(2))]
    before_outbox = store.pending_cdrs()
    again = reopen(store)
    try:
        assert again.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert again.db.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert [again.get_session(sid(1)), again.get_session(sid(2))] == before_sessions
        assert again.pending_cdrs() == before_outbox
        assert [r.session_id for r in again.open_sessions()] == [sid(2)]
        assert again.command_response("cmd-1") == ("resp", None)
        assert again.availability() == {EVSE_2: False}
        assert [r.session_id for r in again.recent_sessions()] == [sid(2), sid(1)]
        assert again.integrity_ok()
    finally:
        again.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE future (x)")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    s = Store(tmp_path)
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}.*newer"):
        s.open()
    s.close()
    db = sqlite3.connect(path)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"future"}  # untouched
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    finally:
        db.close()


def test_recent_sessions_newest_first_with_limit(store: Store) -> None:
    for n in range(1, 6):
        charged_session(store, sid(n), T0 + timedelta(minutes=n), end=T0 + timedelta(hours=n))
    assert [r.session_id for r in store.recent_sessions(limit=3)] == [sid(5), sid(4), sid(3)]


# Every public Store method, called with valid arguments. A failing SQLite underneath must come
# out of each of them as StoreError (the daemon's store-failure path), never as a raw
# sqlite3 error that kills the process.
STORE_READS: dict[str, Callable[[Store], object]] = {
    "get_session": lambda s: s.get_session(sid(1)),
    "open_sessions": lambda s: s.open_sessions(),
    "recent_sessions": lambda s: s.recent_sessions(),
    "pending_cdrs": lambda s: s.pending_cdrs(),
    "outbox_stats": lambda s: s.outbox_stats(),
    "command_response": lambda s: s.command_response("cmd-1"),
    "availability": lambda s: s.availability(),
    "local_list_version": lambda s: s.local_list_version(),
    "local_list_size": lambda s: s.local_list_size(),
    "local_list_entries": lambda s: s.local_list_entries(),
    "local_list_lookup": lambda s: s.local_list_lookup("rfid:04A224B2C13C80"),
    "cache_lookup": lambda s: s.cache_lookup("rfid:04A224B2C13C80"),
    "cache_size": lambda s: s.cache_size(),
    "queued_events": lambda s: s.queued_events(),
    "queued_event_count": lambda s: s.queued_event_count(),
    "session_readings": lambda s: s.session_readings(sid(1)),
    "cdr_payload": lambda s: s.cdr_payload(sid(1)),
    "count_sessions": lambda s: s.count_sessions(),
    "sessions_page": lambda s: s.sessions_page(0, 10),
    "settings": lambda s: s.settings("current_limit:"),
}
STORE_WRITES: dict[str, Callable[[Store], object]] = {
    "checkpoint_runtime": lambda s: s.checkpoint_runtime(),
    "insert_session": lambda s: s.insert_session(
        session_id=sid(1), evse_id=EVSE_1, token=RFID, contract_id=None, start=T0
    ),
    "mark_charging": lambda s: s.mark_charging(sid(1), T0, 1.0),
    "record_meter": lambda s: s.record_meter(sid(1), T0, 1.0),
    "end_session": lambda s: s.end_session(sid(1), end=T0, reason="local"),
    "mark_attempt": lambda s: s.mark_attempt(sid(1), T0),
    "ack_cdr": lambda s: s.ack_cdr(sid(1), T0),
    "save_command": lambda s: s.save_command("cmd-1", "{}", T0),
    "set_availability": lambda s: s.set_availability(EVSE_1, False),
    "replace_local_list": lambda s: s.replace_local_list(
        1, [AuthEntry("rfid:04A224B2C13C80", "accepted")], full=True
    ),
    "cache_put": lambda s: s.cache_put(AuthEntry("rfid:04A224B2C13C80", "accepted"), T0, 10),
    "queue_event": lambda s: s.queue_event("topic", "{}", T0),
    "drop_events": lambda s: s.drop_events([1]),
    "purge": lambda s: s.purge(T0, retention_days=90),
    "set_setting": lambda s: s.set_setting("current_limit:station", '{"limit_a": 10}'),
}
# not data calls: open/close/integrity_ok/unit/check_file have their own tests; db is the
# raw connection
STORE_LIFECYCLE = {"open", "close", "integrity_ok", "db", "unit", "check_file", "runtime"}


def test_every_public_store_method_is_in_the_failure_tests() -> None:
    public = {name for name in dir(Store) if not name.startswith("_")}
    covered = set(STORE_READS) | set(STORE_WRITES) | STORE_LIFECYCLE
    assert public == covered, "add the new Store method to STORE_READS or STORE_WRITES"


def _close_underneath(store: Store) -> None:
    store.db.close()  # the Store still holds it: every statement now fails


def _drop_tables(store: Store) -> None:
    tables = [
        r[0]
        for r in store.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    store.db.execute("PRAGMA foreign_keys=OFF")
    for table in tables:
        store.db.execute(f"DROP TABLE {table}")


FAILURES: dict[str, Callable[[Store], None]] = {
    "connection_closed": _close_underneath,
    "tables_dropped": _drop_tables,
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("method", sorted(STORE_READS) + sorted(STORE_WRITES))
def test_sqlite_failures_come_out_as_store_error(store: Store, failure: str, method: str) -> None:
    call = {**STORE_READS, **STORE_WRITES}[method]
    FAILURES[failure](store)
    with pytest.raises(StoreError) as info:
        call(store)
    assert isinstance(info.value.__cause__, sqlite3.Error)  # chained: raise ... from err
    if failure == "tables_dropped":
        assert not store.db.in_transaction  # a failed write was rolled back


def test_reads_work_again_after_a_failed_read(store: Store) -> None:
    store.set_availability(EVSE_1, True)
    store.db.execute("ALTER TABLE evse_settings RENAME TO evse_settings_away")
    with pytest.raises(StoreError, match="no such table"):
        store.availability()
    store.db.execute("ALTER TABLE evse_settings_away RENAME TO evse_settings")
    assert store.availability() == {EVSE_1: True}


def test_answered_commands_are_bounded_by_count_not_by_time(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock step (1970 -> now) must not make the station forget what it answered."""
    import agent.store

    monkeypatch.setattr(agent.store, "MAX_ANSWERS", 3)
    for i in range(5):
        store.save_command(f"cmd-{i}", "{}", datetime(1970, 1, 1, tzinfo=UTC), f"d{i}")
    store.purge(T0 + timedelta(days=20000), retention_days=90)
    kept = [i for i in range(5) if store.command_response(f"cmd-{i}") is not None]
    assert kept == [2, 3, 4]  # the newest three, whatever their time stamps


def test_a_unit_of_work_commits_once_or_not_at_all(store: Store) -> None:
    with pytest.raises(RuntimeError), store.unit():
        store.insert_session(
            session_id=sid(1), evse_id=EVSE_1, token=RFID, contract_id=None, start=T0
        )
        store.save_command("cmd-1", "{}", T0, "d")
        raise RuntimeError("crash before the commit")
    assert store.get_session(sid(1)) is None and store.command_response("cmd-1") is None
    with store.unit():
        store.insert_session(
            session_id=sid(1), evse_id=EVSE_1, token=RFID, contract_id=None, start=T0
        )
        store.save_command("cmd-1", "{}", T0, "d")
        assert store.db.in_transaction  # the inner writes joined the unit
    assert not store.db.in_transaction
    assert store.get_session(sid(1)) is not None and store.command_response("cmd-1") is not None


def test_a_deleted_or_replaced_database_is_noticed(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    store.open()
    store.check_file()  # the file it opened
    other = tmp_path / "state" / "other"
    other.write_bytes(b"")  # made while the database exists: certainly another inode
    os.replace(other, tmp_path / "state" / DB_NAME)
    with pytest.raises(StoreError, match="replaced"):
        store.check_file()
    (tmp_path / "state" / DB_NAME).unlink()
    with pytest.raises(StoreError, match="gone"):
        store.check_file()
    store.close()


# ---------------------------------------------------------------- v4: monotonic marks
def test_monotonic_marks_are_stored_and_read_back(store: Store) -> None:
    store.insert_session(
        session_id=sid(1), evse_id=EVSE_1, token=RFID, contract_id=None, start=T0, mono=12.5
    )
    row = store.get_session(sid(1))
    assert row is not None and (row.mono_start, row.mono_charging_start) == (12.5, None)
    store.mark_charging(sid(1), T0 + timedelta(seconds=5), 100.0, mono=17.25)
    row = store.get_session(sid(1))
    assert row is not None and (row.mono_start, row.mono_charging_start) == (12.5, 17.25)
    store.insert_session(
        session_id=sid(2),
        evse_id=EVSE_2,
        token=RFID,
        contract_id=None,
        start=T0,
        meter_kwh=3.0,
        mono=40.0,
    )  # charging at once: both marks from the one commit
    row = store.get_session(sid(2))
    assert row is not None and (row.mono_start, row.mono_charging_start) == (40.0, 40.0)
    charged_session(store, sid(3), T0)  # callers that pass no marks get none
    row = store.get_session(sid(3))
    assert row is not None and (row.mono_start, row.mono_charging_start) == (None, None)


def test_a_v3_database_upgrades_to_the_current_version_in_place(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / DB_NAME)
    for version in (1, 2, 3):
        for stmt in _split_sql(_MIGRATIONS[version]):
            db.execute(stmt)
    db.execute("PRAGMA user_version = 3")
    db.execute(
        "INSERT INTO sessions (session_id, evse_id, token, state, session_start, charging_start,"
        " meter_start_kwh, boot_id, updated_at) VALUES (?, ?, ?, 'charging', ?, ?, 1.0, 'b', ?)",
        (sid(1), EVSE_1, json.dumps(RFID), rfc3339(T0), rfc3339(T0), rfc3339(T0)),
    )
    db.commit()
    db.close()
    store = Store(tmp_path)
    store.open()
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
        row = store.get_session(sid(1))
        assert row is not None and row.state == "charging" and row.session_start == T0
        assert (row.mono_start, row.mono_charging_start) == (None, None)  # no marks: wall only
    finally:
        store.close()


class SteppedMonotonic:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t


def test_running_time_adds_up_across_runs(tmp_path: Path) -> None:
    mono = SteppedMonotonic()
    store = Store(tmp_path, monotonic=mono)
    store.open()
    assert store.runtime() == 0.0
    mono.t += 100.0
    store.close()  # saved at close
    mono.t = 7.0  # a new boot: the monotonic clock starts again
    again = Store(tmp_path, monotonic=mono)
    again.open()
    mono.t += 50.0
    assert again.runtime() == pytest.approx(150.0)
    again.checkpoint_runtime()
    mono.t += 1.0
    assert again.runtime() == pytest.approx(151.0)
    again.close()


def test_a_clock_stepped_back_cannot_keep_data_beyond_the_retention(tmp_path: Path) -> None:
    """Acknowledged CDRs, ended sessions and cached answers are purged once the station has
    run for the retention period since, whatever the wall clock says."""
    mono = SteppedMonotonic()
    store = Store(tmp_path, monotonic=mono)
    store.open()
    charged_session(store, sid(1), T0, end=T0 + timedelta(hours=1))
    store.ack_cdr(sid(1), T0 + timedelta(hours=2))
    store.cache_put(AuthEntry("rfid:04A224B2C13C80", "accepted"), T0, 10)
    stepped_back = T0 - timedelta(days=365)  # the wall clock now reads a year earlier
    mono.t += 89 * 86400.0
    assert not any(store.purge(stepped_back, retention_days=90).values())  # 89 days: kept
    mono.t += 2 * 86400.0
    counts = store.purge(stepped_back, retention_days=90)
    assert counts == {"cdrs": 1, "sessions": 1, "auth_cache": 1}
    assert store.get_session(sid(1)) is None and store.cache_size() == 0
    store.close()


def test_settings_by_prefix(store: Store) -> None:
    store.set_setting("current_limit:station", "a")
    store.set_setting("current_limit:DE*ICE*E000001*1", "b")
    store.set_setting("current_limit:station", "c")  # replaced
    store.replace_local_list(1, [], full=True)  # another meta entry: not in the prefix
    assert store.settings("current_limit:") == {
        "current_limit:station": "c",
        "current_limit:DE*ICE*E000001*1": "b",
    }
    store.set_setting("current_limit:station", None)
    assert store.settings("current_limit:") == {"current_limit:DE*ICE*E000001*1": "b"}
    assert store.settings("current_limit_") == {}  # '_' is no wildcard here
