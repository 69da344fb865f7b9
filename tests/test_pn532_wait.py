"""The PN532's waiting detection (issue 17).

* the simulated PN532's waiting semantics, frame by frame on the raw pty: no answer while no card
  and MxRtyPassiveActivation is 0xFF, the answer when a card comes, an ACK aborts;
* :class:`WaitingLink` byte-exact against a scripted chip on a pty (what it writes, how it takes a
  card answer that crossed the abort ACK, a chip that does not wait);
* ``Pn532Reader(mode="wait")``: real nfcpy opens the simulated PN532, the driver waits.

The recovery tests (hang, unplug, garble) of both modes are in ``tests/test_pn532_driver.py``.
"""

from __future__ import annotations

import os
import select
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.config import RfidConfig, load_config
from agent.errors import ConfigError
from agent.hardware import build_rfid
from drivers.rfid.base import CardRead, CardType
from drivers.rfid.pn532 import Pn532Reader
from drivers.rfid.pn532_frames import ACK
from drivers.rfid.pn532_sim import SimulatedPN532
from drivers.rfid.pn532_wait import LinkError, Seen, WaitingLink

pytest.importorskip("nfc")
serial = pytest.importorskip("serial")

H = bytes.fromhex
# host -> chip
SET_WAIT = H("0000ff06fad4320501 00fff500")  # RFConfiguration 5: MxRty 01 00 FF
SET_ONE_TRY = H("0000ff06fad43205010001f300")  # RFConfiguration 5: MxRty 01 00 01
RF_OFF = H("0000ff04fcd4320102f700")  # RFConfiguration 1: RF off, auto RF on
ARM = H("0000ff04fcd44a0100e100")  # InListPassiveTarget MaxTg 1, 106A
GET_VERSION = H("0000ff02fed4022a00")
# chip -> host
RF_CFG_OK = H("0000ff02fed533f800")
VERSION = H("0000ff06fad50332010607e800")
NO_TARGET = H("0000ff03fdd54b00e000")
FOUND = {
    "DEADBEEF": H("0000ff0cf4d54b01010004 0804deadbeef9600"),
    "04A224B2C13C80": H("0000ff0ff1d54b0101004400 0704a224b2c13c809a00"),
    "04010203040506070809": H("0000ff12eed54b01010084000a040102030405060708091f00"),
}


def read_exactly(fd: int, n: int, timeout: float = 2.0) -> bytes:
    """``n`` bytes from ``fd`` (fewer if ``timeout`` passes first)."""
    out = b""
    deadline = time.monotonic() + timeout
    while len(out) < n and (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            out += os.read(fd, n - len(out))
    return out


def buffered(fd: int) -> bytes:
    """Whatever has already arrived on ``fd`` (no waiting)."""
    out = b""
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 512)
        if not chunk:
            break
        out += chunk
    return out


def wait_until(pred: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)  # the polling interval of this wait, not a wait for readiness
    return pred()


@pytest.fixture
def sim() -> Iterator[SimulatedPN532]:
    s = SimulatedPN532().start()
    yield s
    s.stop()


@pytest.fixture
def chip(sim: SimulatedPN532) -> Iterator[int]:
    """The host end of the simulator's pty, raw."""
    fd = os.open(sim.device_path, os.O_RDWR | os.O_NOCTTY)
    yield fd
    os.close(fd)


def command(fd: int, frame: bytes, answer: bytes) -> None:
    os.write(fd, frame)
    assert read_exactly(fd, len(ACK + answer)) == ACK + answer


# ---------------------------------------------------------------------- the simulated chip


@pytest.mark.parametrize(("uid", "sak"), [("DEADBEEF", 0x08), ("04A224B2C13C80", 0x00)])
def test_sim_waits_silently_and_answers_when_the_card_comes(
    sim: SimulatedPN532, chip: int, uid: str, sak: int
) -> None:
    command(chip, SET_WAIT, RF_CFG_OK)
    os.write(chip, ARM)
    assert read_exactly(chip, len(ACK)) == ACK
    assert sim.wait_armed()
    assert buffered(chip) == b""  # the ACK and nothing else: the chip waits
    sim.place_card(uid, sak=sak)
    assert read_exactly(chip, len(FOUND[uid])) == FOUND[uid]
    assert not sim.waiting and sim.unaborted_commands == 0


def test_sim_ten_byte_uid_and_a_card_already_there_answer_at_once(
    sim: SimulatedPN532, chip: int
) -> None:
    sim.place_card("04010203040506070809", sak=0x00)
    command(chip, SET_WAIT, RF_CFG_OK)
    command(chip, ARM, FOUND["04010203040506070809"])
    assert not sim.waiting


def test_sim_ack_aborts_the_waiting_command(sim: SimulatedPN532, chip: int) -> None:
    command(chip, SET_WAIT, RF_CFG_OK)
    os.write(chip, ARM)
    assert read_exactly(chip, len(ACK)) == ACK and sim.wait_armed()
    t0 = time.monotonic()
    os.write(chip, ACK)
    assert wait_until(lambda: not sim.waiting)
    assert len(sim.abort_times) == 1 and sim.abort_times[0] >= t0
    sim.place_card("DEADBEEF")
    # no late card answer: the next bytes are GetFirmwareVersion's own
    command(chip, GET_VERSION, VERSION)
    assert sim.unaborted_commands == 0


def test_sim_with_one_retry_answers_no_target_at_once(sim: SimulatedPN532, chip: int) -> None:
    command(chip, SET_ONE_TRY, RF_CFG_OK)  # what nfcpy's open sets
    command(chip, ARM, NO_TARGET)
    assert not sim.waiting


def test_sim_counts_a_command_sent_without_aborting_the_wait(
    sim: SimulatedPN532, chip: int
) -> None:
    command(chip, RF_OFF, RF_CFG_OK)  # MxRty is 0xFF after reset already
    os.write(chip, ARM)
    assert read_exactly(chip, len(ACK)) == ACK and sim.wait_armed()
    command(chip, GET_VERSION, VERSION)
    assert sim.unaborted_commands == 1 and not sim.waiting


def test_sim_hang_loses_the_waiting_command(sim: SimulatedPN532, chip: int) -> None:
    command(chip, SET_WAIT, RF_CFG_OK)
    os.write(chip, ARM)
    assert read_exactly(chip, len(ACK)) == ACK and sim.wait_armed()
    sim.hang()
    assert not sim.waiting
    sim.unhang()
    sim.place_card("DEADBEEF")
    command(chip, GET_VERSION, VERSION)


# ---------------------------------------------------------------------- WaitingLink, byte-exact


class ScriptedChip:
    """The chip end of a pty: expects exact host frames and answers from a script."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.port = serial.Serial(os.ttyname(slave), 115200, timeout=0.1)
        os.close(slave)
        self.wake_r, self.wake_w = os.pipe()

    def expect(self, frame: bytes, *answers: bytes) -> None:
        assert read_exactly(self.master, len(frame)) == frame
        for answer in answers:
            os.write(self.master, answer)

    def play(self, steps: list[tuple[bytes, bytes]]) -> threading.Thread:
        """Run ``(expected host frame, answer)`` steps in a thread."""
        errors: list[BaseException] = []

        def run() -> None:
            try:
                for frame, answer in steps:
                    self.expect(frame, answer)
            except (AssertionError, OSError) as err:  # surfaced by the test's join
                errors.append(err)

        thread = threading.Thread(target=run)
        thread.errors = errors  # type: ignore[attr-defined]
        thread.start()
        return thread

    def close(self) -> None:
        self.port.close()
        for fd in (self.master, self.wake_r, self.wake_w):
            os.close(fd)


@pytest.fixture
def scripted() -> Iterator[ScriptedChip]:
    c = ScriptedChip()
    yield c
    c.close()


def finish(thread: threading.Thread) -> None:
    thread.join(5)
    assert not thread.is_alive() and not thread.errors  # type: ignore[attr-defined]


def test_link_writes_exact_frames_and_checks_the_chip(scripted: ScriptedChip) -> None:
    link = WaitingLink(scripted.port, scripted.wake_r)
    steps = [
        (SET_WAIT, ACK + RF_CFG_OK),
        (RF_OFF, ACK + RF_CFG_OK),
        (ARM, ACK),
        (ACK, b""),  # the abort: exactly an ACK frame
        (GET_VERSION, ACK + VERSION),
    ]
    thread = scripted.play(steps)
    link.configure()
    link.arm()
    assert link.armed
    assert link.wait(0.05) is None  # no card: no answer
    link.abort()
    assert not link.armed
    assert link.check() == "PN532 v1.6"
    finish(thread)
    assert buffered(scripted.master) == b""  # nothing else was written


def test_link_reports_the_card_that_answers_the_wait(scripted: ScriptedChip) -> None:
    link = WaitingLink(scripted.port, scripted.wake_r)
    thread = scripted.play([(RF_OFF, ACK + RF_CFG_OK), (ARM, ACK + FOUND["04A224B2C13C80"])])
    link.arm()
    assert link.wait(2.0) == Seen("04A224B2C13C80", 0x00)
    finish(thread)


def test_link_keeps_a_card_answer_that_crossed_the_abort(scripted: ScriptedChip) -> None:
    link = WaitingLink(scripted.port, scripted.wake_r)
    steps = [
        (RF_OFF, ACK + RF_CFG_OK),
        (ARM, ACK),
        (ACK, FOUND["DEADBEEF"]),  # the card answered just as the host aborted
        (GET_VERSION, ACK + VERSION),
    ]
    thread = scripted.play(steps)
    link.arm()
    link.abort()
    assert link.check() == "PN532 v1.6"
    assert link.take_late() == Seen("DEADBEEF", 0x08)
    assert link.take_late() is None
    finish(thread)


def test_link_says_so_when_the_chip_does_not_wait(scripted: ScriptedChip) -> None:
    link = WaitingLink(scripted.port, scripted.wake_r)
    thread = scripted.play([(RF_OFF, ACK + RF_CFG_OK), (ARM, ACK + NO_TARGET)])
    link.arm()
    with pytest.raises(LinkError, match=r"rfid\.mode = 'poll'"):
        link.wait(2.0)
    finish(thread)


def test_link_silent_chip_times_out_and_corrupt_frame_is_an_error(
    scripted: ScriptedChip,
) -> None:
    link = WaitingLink(scripted.port, scripted.wake_r)
    with pytest.raises(
        LinkError, match=r"no ACK to GetFirmwareVersion within 100 ms \(timed out\)"
    ):
        link.check()
    garbled = VERSION[:-2] + bytes([VERSION[-2] ^ 1]) + VERSION[-1:]
    thread = scripted.play([(GET_VERSION, ACK + garbled)])
    with pytest.raises(LinkError, match="corrupt frame"):
        link.check()
    finish(thread)


def test_link_wake_pipe_ends_a_wait(scripted: ScriptedChip) -> None:
    link = WaitingLink(scripted.port, scripted.wake_r)
    os.write(scripted.wake_w, b"x")
    t0 = time.monotonic()
    assert link.wait(30.0) is None
    assert time.monotonic() - t0 < 1.0


# ---------------------------------------------------------------------- the reader in wait mode


class Cards:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: list[tuple[float, CardRead]] = []

    def __call__(self, card: CardRead) -> None:
        with self.cond:
            self.items.append((time.monotonic(), card))
            self.cond.notify_all()

    def wait_count(self, n: int, timeout: float = 2.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.items) >= n, timeout)


@pytest.fixture
def make_reader(sim: SimulatedPN532) -> Iterator[Callable[..., Pn532Reader]]:
    readers: list[Pn532Reader] = []

    def make(**kwargs: Any) -> Pn532Reader:
        kwargs.setdefault("path", sim.device_path)
        kwargs.setdefault("debounce_s", 0.3)
        kwargs.setdefault("poll_interval_s", 0.05)
        kwargs.setdefault("open_backoff_initial_s", 0.1)
        kwargs.setdefault("open_backoff_max_s", 0.4)
        reader = Pn532Reader(**kwargs)  # mode="wait" is the default
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.stop()


def armed(make: Callable[..., Pn532Reader], sim: SimulatedPN532, cards: Cards, **kw: Any) -> Any:
    reader = make(**kw)
    reader.start(cards)
    assert sim.wait_armed(5.0) and wait_until(lambda: reader.health().ok), reader.health()
    return reader


def present(reader: Pn532Reader, value: bool) -> bool:
    return wait_until(lambda: reader.info()["card_on_reader"] is value)


CARDS = [
    ("DEADBEEF", 0x08, CardType.MIFARE_CLASSIC),
    ("04A224B2C13C80", 0x00, CardType.ULTRALIGHT),
    ("04112233445566", 0x20, CardType.ISO_DEP),
    ("04010203040506070809", 0x00, CardType.ULTRALIGHT),
]


def test_wait_mode_reports_4_7_10_byte_uids_once_when_they_come(
    sim: SimulatedPN532,
    make_reader: Callable[..., Pn532Reader],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cards = Cards()
    reader = armed(make_reader, sim, cards, liveness_s=30.0)
    latencies = []
    for i, (uid, sak, card_type) in enumerate(CARDS * 2):
        assert sim.wait_armed()
        t0 = time.monotonic()
        sim.place_card(uid, sak=sak)
        assert cards.wait_count(i + 1), f"card {uid} not reported"
        latencies.append(cards.items[i][0] - t0)
        assert cards.items[i][1] == CardRead(uid, card_type)
        assert sim.wait_polls(2)  # re-checked while it lies there: still one event
        sim.remove_card()
        assert present(reader, False)
    assert len(cards.items) == len(CARDS) * 2
    assert reader.info()["liveness_checks"] == 0  # no liveness was due: the chip did the waiting
    assert sim.unaborted_commands == 0
    assert max(latencies) < 0.25, latencies
    with capsys.disabled():
        print(
            f"\nPN532 wait mode: place -> callback p50 {statistics.median(latencies) * 1000:.2f} "
            f"ms, max {max(latencies) * 1000:.2f} ms over {len(latencies)} taps"
        )


def test_wait_mode_debounce_after_the_card_left_uses_the_injected_clock(
    sim: SimulatedPN532, make_reader: Callable[..., Pn532Reader]
) -> None:
    clock = FakeClock()
    cards = Cards()
    reader = armed(make_reader, sim, cards, debounce_s=2.0, clock=clock)
    sim.place_card("04A224B2C13C80")
    assert cards.wait_count(1)
    for advance in (0.0, 1.99):  # back within the debounce, measured from the last leave
        sim.remove_card()
        assert present(reader, False) and sim.wait_armed()
        clock.advance(advance)
        sim.place_card("04A224B2C13C80")
        assert present(reader, True)
    assert len(cards.items) == 1
    sim.remove_card()
    assert present(reader, False) and sim.wait_armed()
    clock.advance(2.0)
    sim.place_card("04A224B2C13C80")
    assert cards.wait_count(2)


def test_wait_mode_card_taken_away_during_an_outage_counts_as_left(
    sim: SimulatedPN532, make_reader: Callable[..., Pn532Reader]
) -> None:
    clock = FakeClock()
    cards = Cards()
    # no liveness check due during the test: it must not be what clears the card
    reader = armed(make_reader, sim, cards, debounce_s=2.0, clock=clock, liveness_s=60.0)
    sim.place_card("DEADBEEF")
    assert cards.wait_count(1)
    sim.unplug()
    assert wait_until(lambda: not reader.health().ok)
    sim.remove_card()  # while the reader is away
    sim.replug()
    assert wait_until(lambda: reader.health().ok) and present(reader, False)
    clock.advance(2.0)
    sim.place_card("DEADBEEF")  # the same card again: a new tap, not "still there"
    assert cards.wait_count(2)


def test_wait_mode_swapped_card_is_reported_at_once(
    sim: SimulatedPN532, make_reader: Callable[..., Pn532Reader]
) -> None:
    cards = Cards()
    armed(make_reader, sim, cards, debounce_s=5.0)
    sim.place_card("DEADBEEF")
    assert cards.wait_count(1)
    sim.place_card("04A224B2C13C80")  # no gap: the presence check sees the other card
    assert cards.wait_count(2)
    assert [c.uid for _, c in cards.items] == ["DEADBEEF", "04A224B2C13C80"]


def test_wait_mode_idle_reader_only_checks_liveness(
    sim: SimulatedPN532, make_reader: Callable[..., Pn532Reader]
) -> None:
    reader = armed(make_reader, sim, Cards(), liveness_s=0.2)
    versions0 = sim.commands_seen["GetFirmwareVersion"]
    assert wait_until(lambda: int(str(reader.info()["liveness_checks"])) >= 3)
    info = reader.info()
    assert info["mode"] == "wait" and info["liveness_s"] == 0.2 and info["connected"] is True

    def snapshot() -> tuple[int, int, int, int] | None:
        """The counters between two equal reads of the check count (read while the driver
        runs, they would race it: a check finishing between the reads)."""
        before = int(str(reader.info()["liveness_checks"]))
        seen = (sim.polls, sim.commands_seen["GetFirmwareVersion"] - versions0)
        aborts = len(sim.abort_times)
        after = int(str(reader.info()["liveness_checks"]))
        return (before, *seen, aborts) if before == after else None

    taken: list[tuple[int, int, int, int]] = []

    def consistent() -> bool:
        snap = snapshot()
        if snap is not None:
            taken.append(snap)
        return snap is not None

    assert wait_until(consistent)
    checks, polls, versions, aborts = taken[-1]
    # one arm at open, then one abort + GetFirmwareVersion + re-arm per check (one may be under way)
    assert checks + 1 <= polls <= checks + 2, (checks, polls)
    assert checks <= versions <= checks + 1, (checks, versions)
    assert checks <= aborts <= checks + 1, (checks, aborts)
    assert sim.unaborted_commands == 0


def test_wait_mode_stop_ends_the_wait_at_once_and_leaves_the_chip_idle(
    sim: SimulatedPN532, make_reader: Callable[..., Pn532Reader]
) -> None:
    reader = armed(make_reader, sim, Cards(), liveness_s=60.0)
    t0 = time.monotonic()
    reader.stop()
    assert time.monotonic() - t0 < 1.0  # not the 60 s until the next liveness check
    assert not sim.waiting and sim.unaborted_commands == 0  # aborted with an ACK first
    assert sim.commands_seen.get("PowerDown", 0) == 1


def test_wait_mode_read_once_sees_a_card_lying_on_the_reader(
    sim: SimulatedPN532, make_reader: Callable[..., Pn532Reader]
) -> None:
    cards = Cards()
    reader = armed(make_reader, sim, cards)
    sim.place_card("CAFEBABE")
    assert cards.wait_count(1)
    result = reader.read_once(2.0)  # fed by the presence checks
    assert result is not None and result[0] == CardRead("CAFEBABE", CardType.MIFARE_CLASSIC)
    assert len(cards.items) == 1


# ---------------------------------------------------------------------- configuration


def _config(tmp_path: Path, rfid: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        '[station]\nid = "ST-1"\noperator_id = "DE*ICE"\nlocation = "x"\n'
        f'[rfid]\ndriver = "pn532"\npath = "/dev/ttyUSB0"\n{rfid}'
        '[[evse]]\nid = "DE*ICE*E000001*1"\n'
    )
    return path


def test_config_mode_defaults_to_wait_and_reaches_the_driver(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, ""))
    assert (cfg.rfid.mode, cfg.rfid.liveness_s) == ("wait", 2.0)
    cfg = load_config(_config(tmp_path, 'mode = "poll"\nliveness_s = 5\n'))
    reader = build_rfid(cfg.rfid, FakeClock())
    assert reader.info()["mode"] == "poll"
    reader = build_rfid(RfidConfig(driver="pn532", path="/dev/x", liveness_s=3.0), FakeClock())
    assert reader.info()["mode"] == "wait" and reader.info()["liveness_s"] == 3.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('mode = "waiting"\n', "rfid.mode: Input should be 'wait' or 'poll'"),
        ("mode = 1\n", "rfid.mode: Input should be 'wait' or 'poll'"),
        ("liveness_s = 0.05\n", "rfid.liveness_s: Input should be greater than or equal to 0.2"),
        ("liveness_s = 600\n", "rfid.liveness_s: Input should be less than or equal to 60"),
    ],
)
def test_config_mode_errors_are_clear(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, line))
    assert message in str(info.value)


def test_driver_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        Pn532Reader("/dev/ttyUSB0", mode="interrupt")
