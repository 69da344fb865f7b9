"""The systemd notify protocol (``sd_notify(3)``), implemented directly.

A ``Type=notify`` service tells systemd about itself with datagrams of newline-separated
``VARIABLE=value`` lines sent to the AF_UNIX socket named in ``$NOTIFY_SOCKET``: a filesystem path,
or an abstract name when it starts with ``@`` (the ``@`` stands for the leading NUL byte).

- :meth:`Notifier.ready` (``READY=1``) once the store is open, the relays are open and the drivers
  are up; without it systemd kills the service after ``TimeoutStartSec=``.
- :meth:`Notifier.status` (``STATUS=...``): a one-line summary shown by ``systemctl status``.
- :meth:`Notifier.watchdog` (``WATCHDOG=1``): sent from the main loop while it and the store are
  healthy, every :meth:`Notifier.ping_interval_s` seconds (half of ``WatchdogSec=``); a loop that
  stops pinging is killed and restarted. :class:`WatchdogPinger` does the scheduling.
- :meth:`Notifier.stopping` (``STOPPING=1``) when shutting down.

Error policy: notifications are best effort. :meth:`Notifier.send` returns ``False`` when a
datagram could not be delivered and logs the failure: the first failure of a run of failures at
WARNING, repeats at DEBUG (so a broken socket does not flood the journal every 15 s), and a later
success at INFO. Nothing is swallowed silently. :class:`NotifyError` is raised only for caller
mistakes (an invalid variable name, a newline inside a value), which no retry can fix.

Outside systemd (``$NOTIFY_SOCKET`` unset) every call is a cheap no-op returning ``False``.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Mapping

from agent.errors import AgentError

log = logging.getLogger(__name__)

# sd_notify(3): variable names are upper-case; systemd ignores what it does not know
_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
SEND_TIMEOUT_S = 1.0  # a full notify socket must not hang the main loop for long


class NotifyError(AgentError):
    """A notification was malformed (a programming error, not a delivery failure)."""


def _address(value: str) -> bytes | None:
    """The ``sockaddr_un`` path for ``$NOTIFY_SOCKET``, or None when it is unusable."""
    if value.startswith("@"):
        addr = b"\0" + os.fsencode(value[1:])
    elif value.startswith("/"):
        addr = os.fsencode(value)
    else:
        return None
    if len(addr) > _SUN_PATH_MAX or len(addr) < 2:
        return None
    return addr


class Notifier:
    """Sends notifications to the service manager named by ``$NOTIFY_SOCKET``.

    Construction only reads the mapping (``os.environ`` by default); it does no I/O, so it is safe
    to build one unconditionally at start-up.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._socket_name = env.get("NOTIFY_SOCKET", "")
        self._address = _address(self._socket_name) if self._socket_name else None
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._failing = False

    @property
    def enabled(self) -> bool:
        """True when started by systemd with a notify socket (``$NOTIFY_SOCKET`` set)."""
        return bool(self._socket_name)

    @property
    def socket_name(self) -> str:
        return self._socket_name

    # ------------------------------------------------------------------ sending
    def send(self, **fields: str | int) -> bool:
        """Send one datagram with ``NAME=value`` lines; True when it was delivered.

        Example: ``send(READY=1, STATUS="2 EVSEs, broker connected")``.
        Raises :class:`NotifyError` for an invalid name or a value containing a newline.
        """
        if not fields:
            raise NotifyError("sd_notify: nothing to send")
        lines = []
        for name, value in fields.items():
            if not _NAME.match(name):
                raise NotifyError(f"sd_notify: invalid variable name {name!r}")
            text = str(value)
            if "\n" in text or "\0" in text:
                raise NotifyError(f"sd_notify: the value of {name} contains a newline or NUL")
            lines.append(f"{name}={text}")
        if not self.enabled:
            return False
        return self._deliver("\n".join(lines).encode("utf-8"), lines[0].split("=", 1)[0])

    def _deliver(self, datagram: bytes, what: str) -> bool:
        if self._address is None:
            return self._failed(
                what,
                f"NOTIFY_SOCKET={self._socket_name!r} is neither an "
                "absolute path nor an abstract name ('@...')",
            )
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT_S)
                sent = sock.sendto(datagram, self._address)
        except OSError as err:  # ENOENT, ECONNREFUSED, EAGAIN/timeout, EPERM, ...
            return self._failed(what, f"{type(err).__name__}: {err}")
        if sent != len(datagram):
            return self._failed(what, f"short send ({sent} of {len(datagram)} bytes)")
        if self._failing:
            self._failing = False
            log.info("sd_notify to %s works again", self._socket_name)
        return True

    def _failed(self, what: str, reason: str) -> bool:
        if self._failing:
            log.debug("sd_notify %s to %s failed again: %s", what, self._socket_name, reason)
        else:
            self._failing = True
            log.warning(
                "sd_notify %s to %s failed: %s (repeats are logged at debug level "
                "until a notification gets through)",
                what,
                self._socket_name,
                reason,
            )
        return False

    # ------------------------------------------------------------------ the messages
    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (with an optional ``STATUS=`` line in the same datagram)."""
        if status is None:
            return self.send(READY=1)
        return self.send(READY=1, STATUS=one_line(status))

    def status(self, text: str) -> bool:
        """``STATUS=<text>``; newlines in ``text`` are folded into one line."""
        return self.send(STATUS=one_line(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: call only while the main loop and the store are healthy."""
        return self.send(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        if status is None:
            return self.send(STOPPING=1)
        return self.send(STOPPING=1, STATUS=one_line(status))

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC=``: ask for more start-up/shutdown time (e.g. a long migration)."""
        return self.send(EXTEND_TIMEOUT_USEC=max(1, int(seconds * 1_000_000)))

    # ------------------------------------------------------------------ watchdog timing
    def watchdog_interval_s(self) -> float | None:
        """``WatchdogSec=`` in seconds when the watchdog applies to this process, else None.

        None when ``$WATCHDOG_USEC`` is unset, not a positive integer, or when ``$WATCHDOG_PID`` is
        set and names another process (the variables were inherited from a parent).
        """
        if not self._watchdog_usec:
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            log.warning("ignoring WATCHDOG_USEC=%r: not an integer", self._watchdog_usec)
            return None
        if usec <= 0:
            log.warning("ignoring WATCHDOG_USEC=%r: not positive", self._watchdog_usec)
            return None
        if self._watchdog_pid:
            try:
                pid = int(self._watchdog_pid)
            except ValueError:
                log.warning(
                    "ignoring the watchdog: WATCHDOG_PID=%r is not a process id", self._watchdog_pid
                )
                return None
            if pid != os.getpid():
                log.debug(
                    "the watchdog is meant for pid %d, not this process (%d)", pid, os.getpid()
                )
                return None
        return usec / 1_000_000

    def ping_interval_s(self) -> float | None:
        """How often to send ``WATCHDOG=1``: half of ``WatchdogSec=`` (None: no watchdog)."""
        interval = self.watchdog_interval_s()
        return None if interval is None else interval / 2


class WatchdogPinger:
    """Schedules ``WATCHDOG=1`` from a loop that wakes up often: ``tick(now, healthy)``.

    ``now`` is a monotonic time in seconds. A ping is sent when ``ping_interval_s`` has passed since
    the last one *and* the caller reports itself healthy; an unhealthy loop simply stops pinging
    and systemd restarts the service once ``WatchdogSec=`` has passed.
    """

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self.interval_s = notifier.ping_interval_s()
        self._last: float | None = None

    @property
    def active(self) -> bool:
        return self.interval_s is not None and self._notifier.enabled

    def tick(self, now: float, healthy: bool = True) -> bool:
        """Ping if due and healthy; True when a ping was delivered."""
        if self.interval_s is None or not healthy:
            return False
        if self._last is not None and now - self._last < self.interval_s:
            return False
        self._last = now
        return self._notifier.watchdog()


def one_line(text: str, limit: int = 200) -> str:
    """Fold ``text`` into one line of at most ``limit`` characters (for ``STATUS=``)."""
    flat = " / ".join(part.strip() for part in text.splitlines() if part.strip())
    flat = flat.replace("\0", "")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
