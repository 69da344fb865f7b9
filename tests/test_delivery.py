"""Delivery in process: fake clock, real SQLite store, recording fake backend.

The two flush tests are the ones of the former tests/test_controller_queue.py (which drove the
old controller's private methods), ported to the Delivery component with their meaning kept: a
long backlog drains completely and in order across batches, and a link that drops mid-flush
keeps the rest queued, in order.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.clock import FakeClock, rfc3339
from agent.config import AgentConfig
from agent.delivery import EVENT_BATCH, Delivery
from agent.messages import RfidToken, SessionEventKind, StopReason, dump, token_for_record
from agent.store import SessionRow, Store
from tests.fakes import FakeBackend, make_config, open_store

EVSE1 = "DE*ICE*E000001*1"
EVSE2 = "DE*ICE*E000001*2"
TOKEN = RfidToken(uid="04A224B2C13C80", card_type="ultralight")
INITIAL_S = 2.0
MAX_S = 10.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 29, 1, 59, 58, 987654, tzinfo=UTC))  # sub-ms on purpose


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    return make_config(
        tmp_path,
        evses=2,
        station={"location": "Königstraße 1, 70173 Stuttgart – Hof"},
        mqtt={"cdr_retry_initial_s": INITIAL_S, "cdr_retry_max_s": MAX_S},
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    yield from open_store(tmp_path)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def delivery(config: AgentConfig, store: Store, backend: FakeBackend, clock: FakeClock) -> Delivery:
    return Delivery(config, store, backend, clock)


def charging(
    store: Store,
    clock: FakeClock,
    *,
    evse_id: str = EVSE1,
    meter_kwh: float | None = 1234.5678912,
    offline: bool = False,
) -> SessionRow:
    sid = str(uuid.uuid4())
    store.insert_session(
        session_id=sid,
        evse_id=evse_id,
        token=token_for_record(TOKEN).model_dump(exclude_none=True),
        contract_id="DE*ICE*C00001*1",
        start=clock.now(),
        offline=offline,
        meter_kwh=meter_kwh,
    )
    row = store.get_session(sid)
    assert row is not None
    return row


def queue_numbered(delivery: Delivery, n: int) -> None:
    for i in range(n):
        delivery.session_event(f"S-{i}", EVSE1, SessionEventKind.STARTED)


def numbers(backend: FakeBackend) -> list[int]:
    return [int(e.session_id.removeprefix("S-")) for e in backend.events]


# ---------------------------------------------------------------- session events
def ack(delivery: Delivery, backend: FakeBackend) -> None:
    """The broker's acknowledgements arrive (the loop's Delivered input), and a housekeeping
    tick clears them from the store."""
    delivery.confirmed(backend.delivered())
    delivery.forget_acked()


def test_acknowledged_events_leave_the_store_in_batches_and_are_never_sent_again(
    delivery: Delivery, store: Store, backend: FakeBackend
) -> None:
    queue_numbered(delivery, 3)
    delivery.confirmed(backend.delivered())
    assert store.queued_event_count() == 3  # not one commit per acknowledgement
    assert delivery.flush_events() == 0  # acknowledged: not sent again
    delivery.link_lost()
    assert delivery.flush_events() == 0  # not even after the link was lost
    assert delivery.resend(force=True) == 0  # no CDR pending (and the events count as handed over)
    delivery.forget_acked()
    assert store.queued_event_count() == 0
    assert numbers(backend) == [0, 1, 2]


def test_an_event_is_committed_sent_and_leaves_only_when_acknowledged(
    delivery: Delivery, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    backend.auto_ack = False
    delivery.session_event("S-1", EVSE2, SessionEventKind.STOPPED, "local", offline=True)
    [event] = backend.events
    assert (event.session_id, event.evse_id, event.event) == ("S-1", EVSE2, "stopped")
    assert (event.reason, event.offline) == ("local", True)
    assert rfc3339(event.ts) == rfc3339(clock.now())  # as committed: milliseconds
    assert store.queued_event_count() == 1  # handed over, not yet acknowledged: still durable
    assert delivery.flush_events() == 0  # in flight: not sent twice
    [ref] = backend.refs
    backend.acked.append(ref)
    ack(delivery, backend)
    assert store.queued_event_count() == 0


def test_an_unacknowledged_event_is_sent_again_on_the_next_link(
    delivery: Delivery, store: Store, backend: FakeBackend
) -> None:
    """A half-open link: paho took the message, no PUBACK came; then the link is lost."""
    backend.auto_ack = False
    delivery.session_event("S-1", EVSE1, SessionEventKind.STOPPED, "local")
    delivery.link_lost()
    assert store.queued_event_count() == 1
    assert delivery.flush_events() == 1
    assert [e.session_id for e in backend.events] == ["S-1", "S-1"]
    backend.acked.extend(backend.refs)
    ack(delivery, backend)
    assert store.queued_event_count() == 0


def test_an_acknowledgement_of_an_unknown_ref_changes_nothing(
    delivery: Delivery, store: Store, backend: FakeBackend
) -> None:
    backend.auto_ack = False
    delivery.session_event("S-1", EVSE1, SessionEventKind.STARTED)
    delivery.confirmed([999_999])
    assert store.queued_event_count() == 1


def test_offline_false_is_left_out(delivery: Delivery, backend: FakeBackend) -> None:
    delivery.session_event("S-1", EVSE1, SessionEventKind.AUTHORIZED)
    assert backend.events[0].offline is None


@pytest.mark.parametrize("link", ["disconnected", "refused"])
def test_an_event_is_queued_when_it_cannot_go_out(
    delivery: Delivery, store: Store, backend: FakeBackend, link: str
) -> None:
    backend.connected = link != "disconnected"
    backend.refuse = link == "refused"
    delivery.session_event("S-1", EVSE1, SessionEventKind.STARTED)
    assert backend.sent == []
    [(_, kind, payload)] = store.queued_events()
    assert kind == "session"
    assert '"session_id":"S-1"' in payload


def test_a_live_event_goes_after_the_queued_ones(
    delivery: Delivery, store: Store, backend: FakeBackend
) -> None:
    backend.connected = False
    queue_numbered(delivery, 2)
    backend.connected = True
    delivery.session_event("S-2", EVSE1, SessionEventKind.STARTED)  # link up: all go, in order
    assert numbers(backend) == [0, 1, 2]
    ack(delivery, backend)
    assert store.queued_event_count() == 0


def test_a_long_outage_backlog_drains_completely_and_in_order(
    delivery: Delivery, store: Store, backend: FakeBackend
) -> None:
    backend.connected = False
    queue_numbered(delivery, 1234)  # more than one batch
    assert 2 * EVENT_BATCH < 1234
    assert store.queued_event_count() == 1234 and backend.sent == []
    backend.connected = True
    assert delivery.flush_events() == 1234
    assert numbers(backend) == list(range(1234))
    ack(delivery, backend)
    assert store.queued_event_count() == 0
    delivery.session_event("live", EVSE1, SessionEventKind.STOPPED)  # straight out again
    assert backend.events[-1].session_id == "live"
    ack(delivery, backend)
    assert store.queued_event_count() == 0


def test_a_link_that_drops_mid_flush_keeps_the_rest_queued(
    delivery: Delivery, store: Store, backend: FakeBackend
) -> None:
    backend.connected = False
    queue_numbered(delivery, 10)
    backend.connected = True
    backend.drop_after = 4  # the link drops once, after the 4th message
    assert delivery.flush_events() == 4
    ack(delivery, backend)
    assert store.queued_event_count() == 6
    assert backend.refused_of("session_event")[-1].session_id == "S-4"  # tried, refused, kept
    backend.connected = True
    assert delivery.flush_events() == 6
    ack(delivery, backend)
    assert numbers(backend) == list(range(10))
    assert store.queued_event_count() == 0


def test_flush_stops_at_the_first_refused_event_even_if_later_ones_would_go(
    delivery: Delivery, store: Store, backend: FakeBackend
) -> None:
    backend.connected = False
    queue_numbered(delivery, 10)
    backend.connected = True
    refuse = {"S-4"}
    backend.refuse_if = lambda kind, msg: getattr(msg, "session_id", None) in refuse
    assert delivery.flush_events() == 4
    assert numbers(backend) == [0, 1, 2, 3]
    ack(delivery, backend)
    assert store.queued_event_count() == 6
    refuse.clear()
    assert delivery.flush_events() == 6
    assert numbers(backend) == list(range(10))


def test_a_drop_after_the_first_batch_keeps_the_rest_in_order(
    delivery: Delivery, store: Store, backend: FakeBackend
) -> None:
    backend.connected = False
    queue_numbered(delivery, 1234)
    backend.connected = True
    backend.drop_after = EVENT_BATCH + 200
    assert delivery.flush_events() == 700
    ack(delivery, backend)
    assert store.queued_event_count() == 534
    assert delivery.flush_events() == 0  # still down: nothing sent, nothing lost
    assert store.queued_event_count() == 534
    backend.connected = True
    assert delivery.flush_events() == 534
    ack(delivery, backend)
    assert numbers(backend) == list(range(1234))
    assert store.queued_event_count() == 0


def test_an_unreadable_queued_event_is_dropped_and_the_rest_goes_on(
    delivery: Delivery, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    backend.connected = False
    queue_numbered(delivery, 1)
    store.queue_event("session", '{"not": "an event"}', clock.now())
    delivery.session_event("S-1", EVSE1, SessionEventKind.STARTED)
    backend.connected = True
    assert delivery.flush_events() == 2  # the unreadable one is dropped (logged), not sent
    assert numbers(backend) == [0, 1]
    ack(delivery, backend)
    assert store.queued_event_count() == 0


# ---------------------------------------------------------------- settle
def test_settle_commits_end_and_cdr_then_sends_stopped_then_the_cdr(
    delivery: Delivery, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    row = charging(store, clock, meter_kwh=100.0)
    clock.advance(3600)
    end = clock.now()

    def committed_first(kind: str, msg: BaseModel) -> None:
        ended = store.get_session(row.session_id)
        assert ended is not None and ended.state == "ended"  # persisted before anything is said
        assert [c.session_id for c in store.pending_cdrs()] == [row.session_id]

    backend.on_send = committed_first
    cdr = delivery.settle(row, StopReason.LOCAL, end, 111.5)

    assert backend.kinds() == ["session_event", "cdr"]
    [stopped] = backend.events
    assert (stopped.session_id, stopped.event, stopped.reason) == (
        row.session_id,
        "stopped",
        "local",
    )
    assert backend.cdrs == [cdr]
    ended = store.get_session(row.session_id)
    assert ended is not None
    assert (ended.state, ended.stop_reason, ended.session_end, ended.meter_last_kwh) == (
        "ended",
        "local",
        end.replace(microsecond=end.microsecond // 1000 * 1000),
        111.5,
    )
    [entry] = store.pending_cdrs()
    assert entry.payload == dump(cdr).decode()
    assert entry.attempts == 1 and entry.last_attempt_at is not None
    assert (cdr.meter_start_kwh, cdr.meter_stop_kwh, cdr.energy_kwh) == (100.0, 111.5, 11.5)
    assert (cdr.session_start, cdr.session_end, cdr.charging_end) == (row.session_start, end, end)
    assert cdr.stop_reason is StopReason.LOCAL and cdr.offline is False


def test_record_end_commits_and_says_nothing_yet(
    delivery: Delivery, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    """The end is committed before the relay opens; it is announced only afterwards."""
    row = charging(store, clock)
    cdr = delivery.commit_end(row, StopReason.POWER_LOSS, clock.now(), 1240.0)
    assert backend.kinds() == []
    ended = store.get_session(row.session_id)
    assert ended is not None and ended.state == "ended"
    [entry] = store.pending_cdrs()
    assert entry.payload == dump(cdr).decode() and entry.attempts == 0
    [(_, _, stopped)] = store.queued_events()  # the 'stopped' event, in the same commit
    assert '"event":"stopped"' in stopped and '"reason":"power_loss"' in stopped
    delivery.announce_end(row, cdr)
    assert backend.kinds() == ["session_event", "cdr"]


def test_settle_never_bills_a_negative_energy(
    delivery: Delivery, store: Store, clock: FakeClock
) -> None:
    row = charging(store, clock, meter_kwh=50.0)
    cdr = delivery.settle(row, StopReason.EV_DISCONNECTED, clock.now(), 49.0)
    assert (cdr.meter_start_kwh, cdr.meter_stop_kwh, cdr.energy_kwh) == (50.0, 50.0, 0.0)


def test_settle_of_an_offline_session_says_so(
    delivery: Delivery, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    row = charging(store, clock, offline=True)
    cdr = delivery.settle(row, StopReason.LOCAL, clock.now(), 1240.0)
    assert backend.events[0].offline is True and cdr.offline is True


@pytest.mark.parametrize("link", ["disconnected", "refused"])
def test_settle_without_a_link_keeps_both_and_sends_nothing(
    delivery: Delivery, store: Store, backend: FakeBackend, clock: FakeClock, link: str
) -> None:
    backend.connected = link != "disconnected"
    backend.refuse = link == "refused"
    row = charging(store, clock)
    delivery.settle(row, StopReason.LOCAL, clock.now(), 1240.0)
    assert backend.sent == []
    refused = [] if link == "disconnected" else ["session_event"]  # down: not even tried
    assert [k for k, _ in backend.refused] == refused  # the CDR waits behind the event
    assert store.queued_event_count() == 1
    [entry] = store.pending_cdrs()
    assert (entry.attempts, entry.last_attempt_at) == (0, None)


def test_a_cdr_waits_behind_queued_events(
    delivery: Delivery, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    backend.connected = False
    queue_numbered(delivery, 3)
    backend.connected = True
    backend.refuse = True  # back, but the queued events cannot go yet
    row = charging(store, clock)
    delivery.settle(row, StopReason.LOCAL, clock.now(), 1240.0)
    assert backend.sent == []  # neither the 'stopped' event nor the CDR jumps the queue
    assert store.queued_event_count() == 4
    assert delivery.resend(force=True) == 0  # not before the events
    backend.refuse = False
    assert delivery.flush_events() == 4
    assert delivery.resend(force=True) == 1
    assert backend.kinds() == ["session_event"] * 4 + ["cdr"]
    assert [e.session_id for e in backend.events] == ["S-0", "S-1", "S-2", row.session_id]
    assert backend.cdrs[0].session_id == row.session_id


# ---------------------------------------------------------------- resend
def sent_at(delivery: Delivery, backend: FakeBackend, clock: FakeClock, seconds: int) -> list[int]:
    """Step the clock one second at a time; the seconds at which a CDR went out."""
    times = []
    for t in range(1, seconds + 1):
        clock.advance(1)
        before = len(backend.cdrs)
        assert delivery.resend() == len(backend.cdrs) - before
        if len(backend.cdrs) > before:
            times.append(t)
    return times


def test_resend_backs_off_doubling_up_to_the_cap(
    delivery: Delivery, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    row = charging(store, clock)
    delivery.settle(row, StopReason.LOCAL, clock.now(), 1240.0)  # attempt 1 at t=0
    assert len(backend.cdrs) == 1
    # back-off 2, 4, 8, then capped at 10: attempts at 2, 6, 14, 24, 34, 44
    assert sent_at(delivery, backend, clock, 45) == [2, 6, 14, 24, 34, 44]
    [entry] = store.pending_cdrs()
    assert entry.attempts == 7


def test_resend_a_never_sent_cdr_is_due_at_once(
    delivery: Delivery, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    backend.connected = False
    row = charging(store, clock)
    delivery.record_end(row, StopReason.LOCAL, clock.now(), 1240.0)
    assert delivery.resend() == 0  # link down: not even tried
    assert backend.refused == []
    backend.connected = True
    assert delivery.resend() == 1
    assert sent_at(delivery, backend, clock, 7) == [2, 6]


def test_a_refused_resend_does_not_count_as_an_attempt(
    delivery: Delivery, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    row = charging(store, clock)
    delivery.settle(row, StopReason.LOCAL, clock.now(), 1240.0)  # attempt 1 at t=0
    backend.refuse = True
    assert sent_at(delivery, backend, clock, 3) == []  # due at 2, refused
    backend.refuse = False
    assert sent_at(delivery, backend, clock, 1) == [1]  # still due at t=4: goes at once
    [entry] = store.pending_cdrs()
    assert entry.attempts == 2


def test_force_sends_every_pending_cdr(
    delivery: Delivery, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    for _ in range(3):
        delivery.settle(charging(store, clock), StopReason.LOCAL, clock.now(), 1240.0)
    clock.advance(0.5)
    assert delivery.resend() == 0  # none due yet
    assert delivery.resend(force=True) == 3
    assert len(backend.cdrs) == 6


def test_after_an_outage_the_oldest_cdr_goes_first(
    delivery: Delivery, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    backend.connected = False
    rows = [charging(store, clock, evse_id=e) for e in (EVSE1, EVSE2, EVSE1)]
    for row in rows:
        clock.advance(60)
        delivery.settle(row, StopReason.LOCAL, clock.now(), 1240.0)
    backend.connected = True
    assert delivery.flush_events() == 3
    assert delivery.resend(force=True) == 3
    ids = [r.session_id for r in rows]
    assert [c.session_id for c in backend.cdrs] == ids
    assert [e.session_id for e in backend.events] == ids
    assert backend.kinds() == ["session_event"] * 3 + ["cdr"] * 3


def test_resend_stops_at_the_first_refused_cdr(
    delivery: Delivery, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    backend.connected = False
    rows = [charging(store, clock) for _ in range(3)]
    for row in rows:
        delivery.record_end(row, StopReason.LOCAL, clock.now(), 1240.0)
    backend.connected = True
    refuse = {rows[1].session_id}  # the second is refused; the third would go
    backend.refuse_if = lambda kind, msg: getattr(msg, "session_id", None) in refuse
    assert delivery.resend(force=True) == 1
    assert [(e.session_id, e.attempts) for e in store.pending_cdrs()] == [
        (rows[0].session_id, 1),
        (rows[1].session_id, 0),
        (rows[2].session_id, 0),
    ]
    refuse.clear()
    assert delivery.resend(force=True) == 3
    assert [c.session_id for c in backend.cdrs] == [rows[0].session_id] + [
        r.session_id for r in rows
    ]


def test_a_stored_cdr_round_trips_byte_identically(
    delivery: Delivery, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    row = charging(store, clock, meter_kwh=1234.5678912)
    clock.advance(1234.567891)
    cdr = delivery.settle(row, StopReason.EV_DISCONNECTED, clock.now(), 1299.99999949)
    [entry] = store.pending_cdrs()
    assert entry.payload.encode() == dump(cdr)
    assert "Königstraße" in entry.payload  # stored as UTF-8, not \\u-escaped
    clock.advance(INITIAL_S)
    assert delivery.resend() == 1
    first, again = backend.cdrs
    assert dump(again) == dump(first) == entry.payload.encode()


# ---------------------------------------------------------------- acknowledgements
def test_an_acknowledged_cdr_is_not_sent_again(
    delivery: Delivery, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    keep, done = charging(store, clock), charging(store, clock)
    delivery.settle(keep, StopReason.LOCAL, clock.now(), 1240.0)
    delivery.settle(done, StopReason.LOCAL, clock.now(), 1240.0)
    delivery.acknowledged([done.session_id])
    assert [e.session_id for e in store.pending_cdrs()] == [keep.session_id]
    backend.sent.clear()
    assert delivery.resend(force=True) == 1
    assert [c.session_id for c in backend.cdrs] == [keep.session_id]
    delivery.acknowledged([done.session_id])  # a duplicate ack changes nothing either
    assert [e.session_id for e in store.pending_cdrs()] == [keep.session_id]


def test_acknowledging_an_unknown_session_changes_nothing(
    delivery: Delivery, store: Store, backend: FakeBackend, clock: FakeClock
) -> None:
    row = charging(store, clock)
    delivery.settle(row, StopReason.LOCAL, clock.now(), 1240.0)
    before = (store.pending_cdrs(), store.outbox_stats(), list(backend.sent))
    delivery.acknowledged(["00000000-0000-0000-0000-000000000000"])
    assert (store.pending_cdrs(), store.outbox_stats(), backend.sent) == before


# ---------------------------------------------------------------- clock steps
BOOT = "boot-1"


class SteppedClock(FakeClock):
    """A fake clock whose wall time can also be stepped alone (NTP), monotonic untouched."""

    def step(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


def marked_session(
    store: Store, clock: FakeClock, *, boot_id: str | None = BOOT, plugged: bool = True
) -> str:
    """A session with its monotonic marks (as the action runner stores them)."""
    sid = str(uuid.uuid4())
    store.insert_session(
        session_id=sid,
        evse_id=EVSE1,
        token=token_for_record(TOKEN).model_dump(exclude_none=True),
        contract_id=None,
        start=clock.now(),
        boot_id=boot_id,
        meter_kwh=100.0 if plugged else None,
        mono=clock.monotonic(),
    )
    return sid


def stepped_delivery(
    config: AgentConfig, store: Store, backend: FakeBackend, clock: FakeClock
) -> Delivery:
    return Delivery(config, store, backend, clock, boot_id=BOOT)


def row_of(store: Store, sid: str) -> SessionRow:
    row = store.get_session(sid)
    assert row is not None
    return row


def test_boot_at_1970_then_ntp_step_cdr_durations_come_from_monotonic(
    config: AgentConfig, store: Store, backend: FakeBackend
) -> None:
    clock = SteppedClock(datetime(1970, 1, 1, 0, 0, 30, tzinfo=UTC))
    delivery = stepped_delivery(config, store, backend, clock)
    sid = marked_session(store, clock, plugged=False)
    clock.advance(20)  # the car is plugged 20 s later
    store.mark_charging(sid, clock.now(), 100.0, mono=clock.monotonic())
    clock.advance(600)
    clock.step((datetime(2026, 6, 1, tzinfo=UTC) - clock.now()).total_seconds())  # NTP
    end = clock.now()
    cdr = delivery.record_end(row_of(store, sid), StopReason.LOCAL, end, 110.0)
    assert cdr.session_end == cdr.charging_end == end
    assert cdr.session_start == end - timedelta(seconds=620)
    assert cdr.charging_start == end - timedelta(seconds=600)
    assert cdr.clock_corrected is True
    assert b'"clock_corrected":true' in dump(cdr)


def test_a_step_back_mid_session_is_corrected_and_flagged(
    config: AgentConfig, store: Store, backend: FakeBackend
) -> None:
    clock = SteppedClock()
    delivery = stepped_delivery(config, store, backend, clock)
    sid = marked_session(store, clock)
    clock.advance(300)
    clock.step(-3600)
    cdr = delivery.record_end(row_of(store, sid), StopReason.LOCAL, clock.now(), 110.0)
    assert cdr.session_end - cdr.session_start == timedelta(seconds=300)
    assert cdr.charging_start == cdr.session_start
    assert cdr.clock_corrected is True


def test_no_step_no_flag_and_small_differences_are_tolerated(
    config: AgentConfig, store: Store, backend: FakeBackend
) -> None:
    clock = SteppedClock()
    delivery = stepped_delivery(config, store, backend, clock)
    start = clock.now()
    sid = marked_session(store, clock)
    clock.advance(3600)
    clock.step(1.5)  # within the tolerance: a slewing clock, not a step
    cdr = delivery.record_end(row_of(store, sid), StopReason.LOCAL, clock.now(), 110.0)
    assert cdr.session_start == cdr.charging_start == start
    assert cdr.clock_corrected is None
    assert b"clock_corrected" not in dump(cdr)  # additive: absent unless corrected


def test_marks_of_another_boot_are_not_compared_but_inverted_times_are_clamped(
    config: AgentConfig, store: Store, backend: FakeBackend
) -> None:
    clock = SteppedClock()
    delivery = stepped_delivery(config, store, backend, clock)
    sid = marked_session(store, clock, boot_id="an-earlier-boot")
    clock.advance(300)
    clock.step(-3600)  # the monotonic marks mean nothing across boots
    cdr = delivery.record_end(row_of(store, sid), StopReason.POWER_LOSS, clock.now(), 110.0)
    assert cdr.session_start == cdr.charging_start == cdr.session_end  # clamped, not reordered
    assert cdr.clock_corrected is True


@pytest.mark.parametrize("boot_id", [BOOT, None])
def test_without_marks_the_wall_times_stand(
    config: AgentConfig, store: Store, backend: FakeBackend, boot_id: str | None
) -> None:
    clock = SteppedClock()
    delivery = stepped_delivery(config, store, backend, clock)
    row = charging(store, clock)  # no monotonic marks (an older database)
    clock.advance(300)
    clock.step(7200)
    cdr = delivery.record_end(row, StopReason.LOCAL, clock.now(), 1240.0)
    assert cdr.session_end - cdr.session_start == timedelta(seconds=7500)
    assert cdr.clock_corrected is None


def test_resend_back_off_runs_on_the_monotonic_clock(
    config: AgentConfig, store: Store, backend: FakeBackend
) -> None:
    clock = SteppedClock()
    delivery = stepped_delivery(config, store, backend, clock)
    sid = marked_session(store, clock)
    delivery.settle(row_of(store, sid), StopReason.LOCAL, clock.now(), 110.0)  # attempt 1
    ack(delivery, backend)
    assert len(backend.cdrs) == 1
    clock.step(-3600)  # the stored last attempt is now an hour in the future
    assert sent_at(delivery, backend, clock, 7) == [2, 6]  # as without the step
    clock.step(+7200)  # a step forward does not make it due early either
    assert sent_at(delivery, backend, clock, 6) == []  # due 8 s after the last, not now


def test_after_a_restart_a_pending_cdr_is_due_at_once(
    config: AgentConfig, store: Store, backend: FakeBackend
) -> None:
    clock = SteppedClock()
    first = stepped_delivery(config, store, backend, clock)
    sid = marked_session(store, clock)
    first.settle(row_of(store, sid), StopReason.LOCAL, clock.now(), 110.0)
    ack(first, backend)
    clock.step(-3600)
    restarted = stepped_delivery(config, store, backend, clock)
    assert restarted.resend() == 1  # no monotonic mark of its own: due at once
    assert restarted.resend() == 0  # then by the back-off again
