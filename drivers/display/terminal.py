"""A display on a text terminal: QR codes drawn with Unicode half blocks plus state lines.

For bench setups, SSH sessions and demos. Every change redraws the whole screen; on a TTY the
screen is cleared first (ANSI ``ESC[H ESC[2J``), on a pipe or file frames are separated by a
rule. Write failures (closed pipe, ...) are reported by :meth:`TerminalDisplay.health` and do not
raise into the daemon. Only segno is needed.
"""

from __future__ import annotations

import sys
from typing import TextIO

from drivers.display.qrcode import (
    DEFAULT_URL_TEMPLATE,
    cached_matrix,
    matrix_to_halfblocks,
    payload_for_screen,
)
from drivers.display.render import StatefulDisplay

__all__ = ["TerminalDisplay"]

_CLEAR = "\x1b[H\x1b[2J"


class TerminalDisplay(StatefulDisplay):
    """:class:`~drivers.display.base.Display` writing to a text stream (stdout by default)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        url_template: str | None = DEFAULT_URL_TEMPLATE,
        *,
        clear_screen: bool | None = None,
        dark_background: bool = True,
    ) -> None:
        """``clear_screen=None`` clears only when the stream is a TTY (checked at the first
        frame). ``dark_background``: see :func:`~drivers.display.qrcode.matrix_to_halfblocks`.
        ``stream=None`` means ``sys.stdout`` as it is when a frame is drawn."""
        self._stream = stream
        self.url_template = url_template
        self.clear_screen = clear_screen
        self.dark_background = dark_background
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    def render_text(self) -> str:
        """The current screen as text (what the next redraw writes, without clearing)."""
        screens, message = self._state.snapshot()
        lines: list[str] = []
        for screen in screens:
            lines.append(f"EVSE {screen.evse_id}  [{screen.state}]")
            payload = payload_for_screen(screen, self.url_template)
            if payload is not None:
                try:
                    matrix = cached_matrix(payload)
                except Exception:  # noqa: BLE001 - segno's DataOverflowError & co
                    lines.append("(QR code unavailable)")
                else:
                    lines.extend(matrix_to_halfblocks(matrix, dark_background=self.dark_background))
            lines.append(f"  {screen.message}")
            lines.append("")
        if message:
            lines.append(f">> {message}")
        return "\n".join(lines) + "\n"

    @property
    def simulated(self) -> bool:
        return False

    def _redraw(self) -> None:
        text = self.render_text()
        stream = self.stream
        try:
            clear = self.clear_screen
            if clear is None:
                try:
                    clear = stream.isatty()
                except (OSError, ValueError):
                    clear = False
            stream.write((_CLEAR if clear else "-" * 40 + "\n") + text)
            stream.flush()
        except (OSError, ValueError) as err:  # ValueError: write to a closed file
            self._state.fail("terminal_write_failed", f"cannot write to the terminal: {err}")
            return
        self._state.ok()
