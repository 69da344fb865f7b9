"""QR reader on a camera (V4L2 through OpenCV's ``VideoCapture``).

A thread grabs a frame every ``1/scan_fps`` seconds, decodes it
(:func:`drivers.qr.decode.decode_image`), debounces (:class:`drivers.qr.debounce.Debouncer`) and
passes each new payload to the callback. When the camera cannot be opened or stops delivering
frames it is released and reopened with exponential back-off (``backoff_initial_s`` doubling up
to ``backoff_max_s``); :meth:`CameraQrReader.health` reports the fault meanwhile.

The capture is made by ``capture_factory(device, width, height)`` and used only through
``isOpened()``, ``read()`` and ``release()``, so tests substitute a fake. The default factory
opens ``cv2.VideoCapture(device, cv2.CAP_V4L2)`` with the requested size and a one-frame buffer
(so the frame decoded is the current one, not one queued seconds ago).

Payloads are personal data (contract ids, PINs): only their length is logged here.
"""

# Heavy imports (numpy, OpenCV, pyzbar, segno) are deferred into functions on purpose.

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from drivers.clock import Clock
from drivers.errors import DriverError
from drivers.health import Health
from drivers.qr.base import PayloadCallback
from drivers.qr.debounce import DEFAULT_DEBOUNCE_S, Debouncer
from drivers.qr.decode import DEFAULT_STAGES, Stage, decode_image, ensure_available

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["CameraQrReader", "Capture", "CaptureFactory", "open_v4l2_capture"]

log = logging.getLogger(__name__)


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` the reader uses."""

    def isOpened(self) -> bool: ...  # OpenCV spells it so

    def read(self) -> tuple[bool, Any]: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[str | int, int, int], Capture]
Decoder = Callable[["NDArray[Any]"], list[str]]


def open_v4l2_capture(device: str | int, width: int, height: int) -> Capture:
    """Open a V4L2 camera: an index (``0``, ``"0"``) or a path (``/dev/video0``,
    ``/dev/v4l/by-id/...``). May return a capture that is not opened; the reader checks."""
    try:
        import cv2
    except ImportError as err:
        raise DriverError(
            f"OpenCV is not available: {err}; pip install 'station-agent[qr]'"
        ) from err
    source: str | int = int(device) if isinstance(device, str) and device.isdigit() else device
    cap = cv2.VideoCapture(source, cv2.CAP_V4L2)
    if cap.isOpened():
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    result: Capture = cap
    return result


class CameraQrReader:
    """:class:`~drivers.qr.base.QrReader` on a camera; the constructor does no I/O."""

    def __init__(  # noqa: PLR0917 - the positional order is the documented driver API
        self,
        device: str | int = 0,
        width: int = 640,
        height: int = 480,
        scan_fps: float = 5.0,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        clock: Clock | None = None,
        *,
        capture_factory: CaptureFactory | None = None,
        decoder: Decoder | None = None,
        stages: Sequence[Stage] = DEFAULT_STAGES,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        max_read_failures: int = 5,
    ) -> None:
        if scan_fps <= 0:
            raise ValueError("scan_fps must be > 0")
        if backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        self.device = device
        self.width = width
        self.height = height
        self.scan_fps = scan_fps
        self._capture_factory: CaptureFactory = capture_factory or open_v4l2_capture
        self._custom_decoder = decoder is not None
        self._stages = tuple(stages)
        self._decoder: Decoder = decoder or self._default_decode
        self._debouncer = Debouncer(debounce_s, clock)
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._max_read_failures = max(1, max_read_failures)

        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._callback: PayloadCallback | None = None
        self._health = Health(ok=False, fault="not_started", detail="camera reader not started")
        self.frames = 0
        self.delivered = 0
        self.reopens = 0
        self.last_decode_ms: float | None = None
        self.last_error: str | None = None

    # ------------------------------------------------------------------ QrReader

    def start(self, on_payload: PayloadCallback) -> None:
        """Start the scan thread. Raises :class:`DriverError` when OpenCV/pyzbar are missing
        (the camera itself may be absent: that is retried and shown by :meth:`health`)."""
        if not self._custom_decoder:
            ensure_available(self._stages)
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("camera QR reader already started")
            self._callback = on_payload
            self._stop.clear()
            self._health = Health(ok=False, fault="camera_opening", detail=self._where())
            self._thread = threading.Thread(
                target=self._run, name=f"qr-camera-{self.device}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and release the camera. Idempotent."""
        with self._lock:
            thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout=5.0)
            if thread.is_alive():
                log.warning("camera thread did not stop within 5 s (blocked in read?)")
        self._set_health(Health(ok=False, fault="stopped", detail="camera reader stopped"))

    @property
    def simulated(self) -> bool:
        return False

    def health(self) -> Health:
        with self._lock:
            return self._health

    def info(self) -> dict[str, object]:
        """Technician facts: device, requested size, scan rate, counters, last error."""
        return {
            "driver": "camera",
            "device": self.device,
            "resolution": f"{self.width}x{self.height}",
            "scan_fps": self.scan_fps,
            "debounce_s": self._debouncer.debounce_s,
            "frames": self.frames,
            "delivered": self.delivered,
            "reopens": self.reopens,
            "last_decode_ms": self.last_decode_ms,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ internals

    def _default_decode(self, frame: NDArray[Any]) -> list[str]:
        return decode_image(frame, stages=self._stages)

    def _where(self) -> str:
        return f"camera {self.device!r}"

    def _set_health(self, health: Health) -> None:
        with self._lock:
            changed = health != self._health
            self._health = health
        if changed and not health.ok and health.fault not in ("camera_opening", "stopped"):
            log.warning("QR camera fault %s: %s", health.fault, health.detail)
        elif changed and health.ok:
            log.info("QR camera %s delivering frames", self.device)

    def _fault(self, fault: str, detail: str) -> None:
        self.last_error = detail
        self._set_health(Health(ok=False, fault=fault, detail=detail))

    def _run(self) -> None:
        backoff = self._backoff_initial
        while not self._stop.is_set():
            cap = self._open()
            if cap is not None:
                if self._scan(cap):
                    backoff = self._backoff_initial  # frames flowed: start back-off afresh
                try:
                    cap.release()
                except Exception as err:  # noqa: BLE001 - a broken capture must not kill us
                    log.debug("release failed: %s", err)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self._backoff_max)
            self.reopens += 1

    def _open(self) -> Capture | None:
        try:
            cap = self._capture_factory(self.device, self.width, self.height)
        except Exception as err:  # noqa: BLE001 - factory/driver errors are retried
            self._fault("camera_unavailable", f"cannot open {self._where()}: {err}")
            return None
        try:
            opened = cap.isOpened()
        except Exception as err:  # noqa: BLE001
            opened = False
            self.last_error = str(err)
        if not opened:
            self._fault(
                "camera_unavailable",
                f"cannot open {self._where()}: check the cable, /dev/video* and that the "
                "agent's user is in the 'video' group",
            )
            with contextlib.suppress(Exception):
                cap.release()
            return None
        return cap

    def _scan(self, cap: Capture) -> bool:
        """Read and decode frames until the camera fails or we stop; ``True`` if any frame came."""
        period = 1.0 / self.scan_fps
        failures = 0
        got_frame = False
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                ok, frame = cap.read()
            except Exception as err:  # noqa: BLE001
                ok, frame = False, None
                self.last_error = f"read raised {err!r}"
            if not ok or frame is None:
                failures += 1
                if failures >= self._max_read_failures:
                    self._fault(
                        "camera_read_failed",
                        f"{self._where()} delivered no frame {failures} times in a row; reopening",
                    )
                    return got_frame
                self._stop.wait(min(period, 0.1))
                continue
            failures = 0
            got_frame = True
            self.frames += 1
            self._set_health(Health.healthy())
            self._handle_frame(frame)
            self._stop.wait(max(0.0, period - (time.monotonic() - t0)))
        return got_frame

    def _handle_frame(self, frame: NDArray[Any]) -> None:
        t0 = time.perf_counter()
        try:
            payloads = self._decoder(frame)
        except Exception as err:  # noqa: BLE001 - one bad frame must not stop the scanner
            self.last_error = f"decode failed: {err}"
            log.warning("QR decode failed: %s", err)
            return
        finally:
            self.last_decode_ms = (time.perf_counter() - t0) * 1000.0
        for payload in payloads:
            if not self._debouncer.accept(payload):
                continue
            self.delivered += 1
            log.info("QR code read by camera (%d characters)", len(payload))
            callback = self._callback
            if callback is None:
                continue
            try:
                callback(payload)
            except Exception:
                log.exception("QR payload callback failed")
