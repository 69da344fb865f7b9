"""QR reader on a folder: every new image file dropped there is decoded (tests, demos, bench).

The folder is polled every ``poll_interval_s``. A file is decoded once it has been seen with the
same size and modification time on two consecutive polls (so a file still being written is
left alone; writing to a temporary name and renaming works too and is the better way). Names
starting with ``.`` and ending in ``.tmp``, ``.part`` or ``~`` are ignored, as are extensions
other than those in ``extensions``. Files already there when the reader starts are skipped
unless ``process_existing=True``. A file is decoded again only when it changes (new size or
mtime), and its payloads are debounced like a camera's. Files are never deleted.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from drivers.clock import Clock
from drivers.errors import DriverError
from drivers.health import Health
from drivers.qr.base import PayloadCallback
from drivers.qr.debounce import DEFAULT_DEBOUNCE_S, Debouncer
from drivers.qr.decode import decode_file

__all__ = ["DEFAULT_EXTENSIONS", "FilesQrReader"]

log = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".pgm",
    ".ppm",
    ".pbm",
    ".webp",
    ".tif",
    ".tiff",
)
_IGNORED_SUFFIXES = (".tmp", ".part", "~")

_Stamp = tuple[int, int]  # (size, mtime_ns)


class FilesQrReader:
    """:class:`~drivers.qr.base.QrReader` watching ``directory``; the constructor does no I/O."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        poll_interval_s: float = 0.2,
        clock: Clock | None = None,
        *,
        process_existing: bool = False,
        extensions: Iterable[str] = DEFAULT_EXTENSIONS,
        decoder: Callable[[str], list[str]] | None = None,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be > 0")
        self.directory = Path(directory)
        self.poll_interval_s = poll_interval_s
        self.process_existing = process_existing
        self.extensions = tuple(e.lower() for e in extensions)
        self._decoder: Callable[[str], list[str]] = decoder or decode_file
        self._debouncer = Debouncer(debounce_s, clock)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._callback: PayloadCallback | None = None
        self._health = Health(ok=False, fault="not_started", detail="files reader not started")
        self._pending: dict[str, _Stamp] = {}  # seen once, waiting for a stable second look
        self._done: dict[str, _Stamp] = {}  # decoded (or skipped) at this stamp
        self.files_decoded = 0
        self.delivered = 0

    # ------------------------------------------------------------------ QrReader

    def start(self, on_payload: PayloadCallback) -> None:
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("files QR reader already started")
            self._callback = on_payload
            self._stop.clear()
            self._pending.clear()
            self._done.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"qr-files-{self.directory.name}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout=5.0)
        self._set_health(Health(ok=False, fault="stopped", detail="files reader stopped"))

    @property
    def simulated(self) -> bool:
        return False

    def health(self) -> Health:
        with self._lock:
            return self._health

    def info(self) -> dict[str, object]:
        return {
            "driver": "files",
            "directory": str(self.directory),
            "poll_interval_s": self.poll_interval_s,
            "files_decoded": self.files_decoded,
            "delivered": self.delivered,
        }

    # ------------------------------------------------------------------ internals

    def _set_health(self, health: Health) -> None:
        with self._lock:
            changed = health != self._health
            self._health = health
        if changed and not health.ok and health.fault not in ("stopped",):
            log.warning("QR files reader fault %s: %s", health.fault, health.detail)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                self.poll(skip=first and not self.process_existing)
                first = False if self._health.ok else first
            except Exception:  # keep watching whatever happens
                log.exception("QR files reader poll failed")
            self._stop.wait(self.poll_interval_s)

    def _wanted(self, name: str) -> bool:
        low = name.lower()
        if name.startswith(".") or low.endswith(_IGNORED_SUFFIXES):
            return False
        return low.endswith(self.extensions)

    def _scan(self) -> dict[str, _Stamp]:
        found: dict[str, _Stamp] = {}
        with os.scandir(self.directory) as it:
            for entry in it:
                if not self._wanted(entry.name):
                    continue
                try:
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                except OSError:
                    continue  # vanished meanwhile
                found[entry.name] = (st.st_size, st.st_mtime_ns)
        return found

    def poll(self, *, skip: bool = False) -> None:
        """One look at the folder (the thread calls this; tests may call it directly).

        ``skip=True`` marks everything present as already done (the first poll, normally).
        """
        try:
            found = self._scan()
        except OSError as err:
            self._set_health(
                Health(
                    ok=False,
                    fault="directory_unavailable",
                    detail=f"cannot list {self.directory}: {err.strerror or err}",
                )
            )
            return
        self._set_health(Health.healthy())
        # forget files that are gone
        for name in list(self._done):
            if name not in found:
                del self._done[name]
        for name in list(self._pending):
            if name not in found:
                del self._pending[name]
        for name, stamp in sorted(found.items()):
            if self._done.get(name) == stamp:
                continue
            if skip:
                self._done[name] = stamp
                continue
            if self._pending.get(name) != stamp or stamp[0] == 0:
                self._pending[name] = stamp  # new or still changing: look again next poll
                continue
            del self._pending[name]
            self._done[name] = stamp
            self._process(self.directory / name)

    def _process(self, path: Path) -> None:
        try:
            payloads = self._decoder(str(path))
        except DriverError as err:
            log.warning("QR files reader: %s", err)
            return
        except Exception:
            log.exception("QR files reader: decoding %s failed", path)
            return
        self.files_decoded += 1
        if not payloads:
            log.info("QR files reader: no QR code in %s", path.name)
        for payload in payloads:
            if not self._debouncer.accept(payload):
                continue
            self.delivered += 1
            log.info("QR code read from %s (%d characters)", path.name, len(payload))
            callback = self._callback
            if callback is None:
                continue
            try:
                callback(payload)
            except Exception:
                log.exception("QR payload callback failed")
