"""A display that writes the station screen to a PNG file (kiosk browser, remote check, demos).

The file is rewritten on every change, atomically (temporary file in the same folder, then
``os.replace``), so a viewer never reads half a frame. Write failures do not raise into the
daemon: they are logged once and reported by :meth:`PngDisplay.health` (fault
``png_write_failed``) until a later write succeeds. The folder is not created.
"""

# Heavy imports (numpy, OpenCV, pyzbar, segno) are deferred into functions on purpose.

from __future__ import annotations

import os
from pathlib import Path

from drivers.display.qrcode import DEFAULT_URL_TEMPLATE, write_png_atomic
from drivers.display.render import StatefulDisplay, render_screen

__all__ = ["PngDisplay"]


class PngDisplay(StatefulDisplay):
    """:class:`~drivers.display.base.Display` writing ``path`` (``width x height`` pixels)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int = 800,
        height: int = 480,
        url_template: str | None = DEFAULT_URL_TEMPLATE,
        *,
        color: bool = True,
    ) -> None:
        if width < 32 or height < 32:
            raise ValueError(f"PNG display too small: {width}x{height}")
        self.path = Path(path)
        self.width = width
        self.height = height
        self.url_template = url_template
        self.color = color
        self.frames_written = 0
        super().__init__()

    @property
    def simulated(self) -> bool:
        return False

    def _redraw(self) -> None:
        import cv2

        screens, message = self._state.snapshot()
        img = render_screen(
            screens,
            message,
            width=self.width,
            height=self.height,
            color=self.color,
            url_template=self.url_template,
        )
        bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
        ok, buf = cv2.imencode(".png", bgr)
        if not ok:
            self._state.fail("png_encode_failed", "OpenCV could not encode the frame as PNG")
            return
        try:
            write_png_atomic(self.path, buf.tobytes())
        except OSError as err:
            self._state.fail(
                "png_write_failed",
                f"cannot write {self.path}: {err.strerror or err}; check that the folder exists "
                "and is writable",
            )
            return
        self.frames_written += 1
        self._state.ok()
