"""Reading QR codes: the decode pipeline on a generated frame set, debounce and the readers."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import segno

from agent.clock import FakeClock
from agent.errors import DriverError
from drivers.display.qrcode import intercharge_payload
from drivers.qr.base import QrReader
from drivers.qr.camera import CameraQrReader
from drivers.qr.debounce import Debouncer
from drivers.qr.decode import (
    ALL_STAGES,
    decode_file,
    decode_image,
    decode_image_staged,
    ensure_available,
)
from drivers.qr.files import FilesQrReader
from drivers.qr.sim import SimQrReader
from drivers.qr.synth import FRAME_CLASSES, make_frame, random_evse_id
from drivers.qr.zbar import bytes_to_text

# --------------------------------------------------------------------------- generated set

FRAMES_PER_CLASS = 20
SEEDS = range(100, 100 + FRAMES_PER_CLASS)  # the benchmark measured seeds 0..59

# Floors for the full pipeline, per class (20 frames of 640x480 each). Measured with
# tests/benchmarks/qr_decode.py (60 frames per class) and on this very set: since zxing-cpp leads
# the pipeline (issue 19) every class is at 100 % in both, except combined frame 112 here (19/20),
# which no stage reads alone either (over 200 benchmark seeds, combined is at 198/200). So every
# floor is what the pipeline reaches: 100 %, and 95 % for combined. Without its retries the
# pipeline loses combined frames (zxing-cpp alone reads about a third of them).
PIPELINE_FLOORS = {**dict.fromkeys(FRAME_CLASSES, 1.0), "combined": 0.95}


@pytest.fixture(scope="module")
def frame_set() -> dict[str, list[tuple[str, np.ndarray]]]:
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for cls in FRAME_CLASSES:
        rnd = random.Random(f"test:{cls}")
        out[cls] = []
        for seed in SEEDS:
            payload = intercharge_payload(random_evse_id(rnd))
            out[cls].append((payload, make_frame(payload, cls, seed)))
    return out


def _rate(cases: list[tuple[str, np.ndarray]], stages: tuple[Any, ...] | None) -> float:
    ok = 0
    for payload, frame in cases:
        found = decode_image(frame) if stages is None else decode_image(frame, stages=stages)
        ok += payload in found
    return ok / len(cases)


@pytest.mark.parametrize("cls", FRAME_CLASSES)
def test_pipeline_success_rate_per_class(
    frame_set: dict[str, list[tuple[str, np.ndarray]]], cls: str
) -> None:
    rate = _rate(frame_set[cls], None)
    assert rate >= PIPELINE_FLOORS[cls], f"{cls}: {rate:.0%} < {PIPELINE_FLOORS[cls]:.0%}"


def test_fallbacks_are_what_rescue_the_hard_classes(
    frame_set: dict[str, list[tuple[str, np.ndarray]]],
) -> None:
    """The set stays hard: zxing-cpp and plain zbar alone fail on combined frames, the
    pipeline's retries do not."""
    combined = frame_set["combined"]
    first = _rate(combined, ("zxing",))
    assert first <= 0.6 and _rate(combined, ("pyzbar",)) <= 0.2, first
    assert _rate(combined, None) - first >= 0.3
    assert _rate(frame_set["noisy"], ("pyzbar",)) < _rate(frame_set["noisy"], None)


def test_no_false_reads_on_frames_without_code() -> None:
    for cls in ("clean", "noisy", "combined"):
        for seed in range(3):
            assert decode_image(make_frame(None, cls, seed)) == []


def test_frame_generation_is_deterministic() -> None:
    a = make_frame("abc", "combined", 5)
    b = make_frame("abc", "combined", 5)
    assert a.shape == (480, 640, 3) and np.array_equal(a, b)
    assert make_frame("abc", "small", 1, 1280, 720, color=False).shape == (720, 1280)
    with pytest.raises(ValueError):
        make_frame("abc", "sideways", 1)


# --------------------------------------------------------------------------- decode API


def test_decode_image_accepts_gray_bgr_bgra_and_other_dtypes() -> None:
    payload = intercharge_payload("DE*AB7*E840*6487")
    bgr = make_frame(payload, "clean", 1)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert decode_image(bgr) == [payload]
    assert decode_image(gray) == [payload]
    assert decode_image(gray[:, :, None]) == [payload]
    assert decode_image(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)) == [payload]
    assert decode_image(gray.astype(np.float32) / 255.0) == [payload]
    assert decode_image(gray.astype(np.uint16) * 256) == [payload]
    assert decode_image(np.zeros((0, 0), np.uint8)) == []
    assert decode_image(np.full((50, 50), 255, np.uint8)) == []
    with pytest.raises(ValueError):
        decode_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError):
        decode_image([[0, 1]])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        decode_image(gray, stages=("zxing-java",))  # type: ignore[arg-type]


def test_each_stage_works_alone() -> None:
    payload = intercharge_payload("DE*AB7*E1")
    frame = make_frame(payload, "clean", 2)
    for stage in ALL_STAGES:
        found, which = decode_image_staged(frame, stages=(stage,))
        assert (found, which) == ([payload], stage)


def test_two_codes_in_one_frame() -> None:
    a = make_frame("first-code", "clean", 1, color=False)
    b = make_frame("second-code", "clean", 2, color=False)
    both = np.hstack([a, b])
    assert sorted(decode_image(both)) == ["first-code", "second-code"]


def test_decode_file(tmp_path: Path) -> None:
    payload = intercharge_payload("DE*AB7*E1")
    ok, buf = cv2.imencode(".jpg", make_frame(payload, "rotated", 3))
    assert ok
    (tmp_path / "a.jpg").write_bytes(buf.tobytes())
    assert decode_file(tmp_path / "a.jpg") == [payload]
    assert decode_file(str(tmp_path / "a.jpg")) == [payload]
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(DriverError, match="not an image"):
        decode_file(tmp_path / "junk.png")
    with pytest.raises(DriverError, match="cannot read"):
        decode_file(tmp_path / "missing.png")


@pytest.mark.parametrize(
    ("module", "hint"),
    [("pyzbar", "libzbar0"), ("cv2", "station-agent[qr]"), ("zxingcpp", "zxing-cpp")],
)
def test_missing_library_gives_driver_error(
    monkeypatch: pytest.MonkeyPatch, module: str, hint: str
) -> None:
    for name in list(sys.modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # makes "import module" raise ImportError
    with pytest.raises(DriverError, match=hint.replace("[", r"\[").replace("]", r"\]")) as err:
        ensure_available()
    assert "station-agent[qr]" in str(err.value)
    with pytest.raises(DriverError):
        decode_image(np.zeros((10, 10), np.uint8))


# --------------------------------------------------------------------------- inverted, non-ASCII


def _render(text: str, *, invert: bool = False, **make: Any) -> np.ndarray:
    """``text`` as a QR code made by segno (``make``: segno's encoding/eci/mode), 6 px per module,
    slightly out of focus; ``invert`` gives light modules on a dark ground (dark-mode screens)."""
    qr = segno.make(text, micro=False, error="m", **make)
    rows = [[bool(v) for v in row] for row in qr.matrix_iter(scale=1, border=4)]
    img = np.where(np.array(rows, dtype=bool), 0, 255).astype(np.uint8)
    if invert:
        img = 255 - img
    img = cv2.resize(img, None, fx=6, fy=6, interpolation=cv2.INTER_NEAREST)
    return cv2.GaussianBlur(img, (0, 0), 1.0)


def test_inverted_codes_are_read() -> None:
    payload = intercharge_payload("DE*AB7*E840*6487")
    screen = _render(payload, invert=True)
    assert decode_image(screen) == [payload]
    assert decode_image(cv2.cvtColor(screen, cv2.COLOR_GRAY2BGR)) == [payload]
    # the pipeline before zxing-cpp (zbar, OpenCV) saw nothing in it
    assert decode_image(screen, stages=("pyzbar", "pyzbar_adaptive", "opencv_aruco")) == []
    # a dark-mode camera frame: the whole scene inverted
    frame = 255 - make_frame(payload, "rotated", 4)
    assert decode_image(frame) == [payload]


NON_ASCII = [
    # (text, segno arguments); the first two are zxing's photo set qrcode-2's payloads
    ("*ﾃﾞｻﾞｲﾝQR*\r\nhttp://d-qr.net/ex/", {"encoding": "shift_jis"}),  # half-width katakana
    ("MECARD:N:測試;;", {"encoding": "utf-8"}),  # UTF-8, no ECI
    ("充電スタンド", {}),  # segno picks the Kanji mode (Shift-JIS)
    ("Ladesäule Müller", {}),  # ISO-8859-1 bytes
    ("Ladesäule €", {}),  # not ISO-8859-1: UTF-8
]


@pytest.mark.parametrize(("text", "make"), NON_ASCII)
def test_non_ascii_payloads_come_out_as_the_right_text(text: str, make: dict[str, Any]) -> None:
    img = _render(text, **make)
    assert decode_image(img) == [text]
    # the fallback decoder too: zbar's own charset guess turned the first two into Chinese
    assert decode_image_staged(img, stages=("pyzbar",)) == ([text], "pyzbar")


def test_eci_payloads_are_read_by_zxing() -> None:
    text = "Ладе 1"
    img = _render(text, encoding="cp1251", eci=True)
    assert decode_image(img) == [text]


def test_bytes_to_text_guesses_like_the_decoders() -> None:
    assert bytes_to_text(b"*\xc3\xde\xbb\xde\xb2\xddQR*") == "*ﾃﾞｻﾞｲﾝQR*"
    assert bytes_to_text("測試".encode()) == "測試"
    assert bytes_to_text(b"M\xfcller \xff") == "Müller ÿ"  # neither UTF-8 nor Shift-JIS
    assert bytes_to_text(b"\x01\x10AD:;;") == "\x01\x10AD:;;"


# --------------------------------------------------------------------------- debounce


def test_debouncer_counts_a_held_code_once() -> None:
    clock = FakeClock()
    deb = Debouncer(5.0, clock)
    assert deb.accept("A")
    for _ in range(20):  # held in front of the camera for 20 s, seen every second
        clock.advance(1.0)
        assert not deb.accept("A")
    assert deb.accept("B")  # other payloads are independent
    clock.advance(4.9)
    assert not deb.accept("B")
    clock.advance(5.0)  # out of sight for 5 s: a new presentation
    assert deb.accept("A") and deb.accept("B")
    deb.reset()
    assert deb.accept("A")


def test_debouncer_zero_and_bounds() -> None:
    clock = FakeClock()
    deb = Debouncer(0.0, clock)
    assert deb.accept("A") and deb.accept("A")
    small = Debouncer(5.0, clock, max_entries=2)
    assert small.accept("A") and small.accept("B") and small.accept("C")
    assert small.accept("A")  # forgotten: only 2 remembered
    with pytest.raises(ValueError):
        Debouncer(-1.0)


# --------------------------------------------------------------------------- sim reader


def test_sim_reader_feed_debounces() -> None:
    clock = FakeClock()
    reader = SimQrReader(debounce_s=5.0, clock=clock)
    got: list[str] = []
    assert not reader.feed("A")  # not started
    reader.start(got.append)
    assert reader.feed("A") and not reader.feed("A")
    clock.advance(6.0)
    assert reader.feed("A")
    assert got == ["A", "A"] and list(reader.delivered) == ["A", "A"]
    reader.stop()
    assert not reader.running and not reader.feed("B")
    assert reader.health().ok


# --------------------------------------------------------------------------- helpers


def wait_for(pred: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.005)  # the polling interval of this wait, not a wait for readiness
    raise AssertionError("condition not met in time")


def count_polls(reader: FilesQrReader) -> Callable[[], int]:
    """Count the reader thread's looks at its folder: the signal that it has seen a change."""
    polls = 0
    poll = reader.poll

    def counted(*, skip: bool = False) -> None:
        nonlocal polls
        poll(skip=skip)
        polls += 1

    reader.poll = counted  # type: ignore[method-assign]
    return lambda: polls


def _png(payload: str | None, seed: int = 1) -> bytes:
    ok, buf = cv2.imencode(".png", make_frame(payload, "clean", seed))
    assert ok
    return bytes(buf.tobytes())


def drop(path: Path, data: bytes) -> None:
    """Write a file the way well-behaved producers do: temporary name, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- files reader


def test_files_reader_picks_up_a_new_file_once(tmp_path: Path) -> None:
    payload = intercharge_payload("DE*AB7*E840*6487")
    (tmp_path / "old.png").write_bytes(_png("already-there"))
    clock = FakeClock()
    got: list[str] = []
    reader = FilesQrReader(tmp_path, debounce_s=5.0, poll_interval_s=0.01, clock=clock)
    polls = count_polls(reader)
    reader.start(got.append)
    try:
        wait_for(lambda: reader.health().ok)
        drop(tmp_path / "new.png", _png(payload))
        wait_for(lambda: got == [payload])
        seen = polls()
        wait_for(lambda: polls() >= seen + 10)  # many more polls: still once
        assert got == [payload] and reader.files_decoded == 1
        drop(tmp_path / "again.png", _png(payload, seed=2))  # same code within 5 s
        wait_for(lambda: reader.files_decoded == 2)
        assert got == [payload]
        clock.advance(6.0)
        drop(tmp_path / "later.png", _png(payload, seed=3))
        wait_for(lambda: len(got) == 2)
        (tmp_path / "notes.txt").write_text("ignored")
        seen = polls()
        wait_for(lambda: polls() >= seen + 3)  # enough looks to decode a wanted file
        assert reader.files_decoded == 3 and "already-there" not in got
    finally:
        reader.stop()
    assert reader.health().fault == "stopped"
    reader.stop()  # idempotent


def test_files_reader_waits_for_partially_written_files(tmp_path: Path) -> None:
    data = _png("complete-code")
    decoded: list[str] = []

    def decoder(path: str) -> list[str]:
        decoded.append(Path(path).name)
        return decode_file(path)

    got: list[str] = []
    reader = FilesQrReader(tmp_path, debounce_s=0, decoder=decoder, process_existing=True)
    reader._callback = got.append  # drive poll() by hand, no thread
    target = tmp_path / "frame.png"
    target.write_bytes(data[: len(data) // 2])
    reader.poll()  # first sight: pending
    with target.open("ab") as fh:
        fh.write(data[len(data) // 2 :])
    reader.poll()  # changed: still pending
    assert decoded == []
    reader.poll()  # stable across two polls: decoded
    reader.poll()
    assert decoded == ["frame.png"] and got == ["complete-code"]
    (tmp_path / "empty.png").write_bytes(b"")
    reader.poll()
    reader.poll()
    assert decoded == ["frame.png"]  # empty files wait
    (tmp_path / "broken.png").write_bytes(b"garbage")
    reader.poll()
    reader.poll()  # decoded, fails, logged, not fatal
    assert decoded == ["frame.png", "broken.png"] and got == ["complete-code"]


def test_files_reader_missing_directory(tmp_path: Path) -> None:
    reader = FilesQrReader(tmp_path / "nope", poll_interval_s=0.01)
    assert reader.health().fault == "not_started"
    reader.start(lambda _p: None)
    try:
        wait_for(lambda: reader.health().fault == "directory_unavailable")
        (tmp_path / "nope").mkdir()
        wait_for(lambda: reader.health().ok)
    finally:
        reader.stop()


# --------------------------------------------------------------------------- camera reader


class FakeCapture:
    """Stands in for cv2.VideoCapture: serves frames from a list, then fails to read."""

    def __init__(
        self, frames: list[Any], opened: bool = True, on_read: Callable[[int], None] | None = None
    ) -> None:
        self.frames = list(frames)
        self.opened = opened
        self.released = False
        self.reads = 0
        self.on_read = on_read

    def isOpened(self) -> bool:  # OpenCV's spelling
        return self.opened

    def read(self) -> tuple[bool, Any]:
        self.reads += 1
        if self.on_read is not None:
            self.on_read(self.reads)
        if not self.frames:
            return False, None
        return True, self.frames.pop(0)

    def release(self) -> None:
        self.released = True


class Factory:
    def __init__(self, *captures: FakeCapture | Exception) -> None:
        self.captures = list(captures)
        self.calls: list[tuple[str | int, int, int]] = []
        self.exhausted = threading.Event()

    def __call__(self, device: str | int, width: int, height: int) -> FakeCapture:
        self.calls.append((device, width, height))
        if not self.captures:
            self.exhausted.set()
            return FakeCapture([], opened=False)
        item = self.captures.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def test_camera_reader_decodes_and_debounces_real_frames() -> None:
    payload = intercharge_payload("+49*810*000*438")
    blank = make_frame(None, "clean", 0)
    frames = [make_frame(payload, cls, i) for i, cls in enumerate(["clean", "rotated", "noisy"])]
    cap = FakeCapture([blank, *frames, frames[0], blank, frames[1]])
    factory = Factory(cap)
    got: list[str] = []
    reader = CameraQrReader(
        "/dev/video9",
        scan_fps=200.0,
        clock=FakeClock(),
        capture_factory=factory,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
    )
    assert factory.calls == [] and reader.health().fault == "not_started"
    reader.start(got.append)
    try:
        wait_for(factory.exhausted.is_set)
        assert got == [payload]  # seen in 5 frames, delivered once
        assert reader.frames == 7 and reader.delivered == 1
        assert cap.released
        assert factory.calls[0] == ("/dev/video9", 640, 480)
        wait_for(lambda: reader.health().fault in ("camera_unavailable", "camera_read_failed"))
        assert reader.info()["last_decode_ms"] is not None
    finally:
        reader.stop()
    assert reader.health().fault == "stopped"


def test_camera_reader_heals_after_failures_and_debounces_by_clock() -> None:
    clock = FakeClock()

    def advance_on_fourth(n: int) -> None:
        if n == 4:
            clock.advance(6.0)

    good = FakeCapture(["A", "A", "A", "A", "B", "A"], on_read=advance_on_fourth)
    factory = Factory(OSError("no such device"), FakeCapture([], opened=False), good)
    got: list[str] = []
    healthy = threading.Event()
    reader = CameraQrReader(
        0,
        scan_fps=500.0,
        clock=clock,
        capture_factory=factory,
        decoder=lambda frame: [str(frame)] if frame else [],  # frames are just strings here
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )

    def on_payload(p: str) -> None:
        got.append(p)
        if reader.health().ok:
            healthy.set()

    reader.start(on_payload)
    try:
        wait_for(factory.exhausted.is_set)
        assert got == ["A", "A", "B"]  # 4th read: clock +6 s, so "A" counts again
        assert healthy.is_set()
        assert reader.reopens >= 2
        assert reader.info()["reopens"] == reader.reopens
    finally:
        reader.stop()


def test_camera_reader_survives_callback_and_decoder_errors() -> None:
    calls: list[str] = []

    def decoder(frame: Any) -> list[str]:
        if frame == "boom":
            raise RuntimeError("bad frame")
        return [frame]

    def callback(p: str) -> None:
        calls.append(p)
        raise RuntimeError("daemon bug")

    factory = Factory(FakeCapture(["boom", "X", "Y"]))
    reader = CameraQrReader(
        0,
        scan_fps=500.0,
        clock=FakeClock(),
        capture_factory=factory,
        decoder=decoder,
        backoff_initial_s=0.01,
    )
    reader.start(callback)
    try:
        wait_for(factory.exhausted.is_set)
        assert calls == ["X", "Y"]
        assert reader.last_error is not None
    finally:
        reader.stop()


def test_camera_reader_stop_is_prompt_and_start_twice_fails() -> None:
    factory = Factory()  # camera never opens
    reader = CameraQrReader(0, capture_factory=factory, backoff_initial_s=30.0, backoff_max_s=30.0)
    reader.start(lambda _p: None)
    with pytest.raises(RuntimeError):
        reader.start(lambda _p: None)
    wait_for(lambda: reader.health().fault == "camera_unavailable")
    t0 = time.monotonic()
    reader.stop()
    assert time.monotonic() - t0 < 2.0
    reader.stop()


def test_readers_satisfy_the_protocol(tmp_path: Path) -> None:
    readers: list[QrReader] = [
        SimQrReader(),
        FilesQrReader(tmp_path),
        CameraQrReader(capture_factory=Factory(), backoff_initial_s=0.01),
    ]
    for r in readers:
        r.start(lambda _p: None)
        r.stop()
        assert r.health() is not None
