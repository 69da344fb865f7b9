"""Render a whole station screen into an image (numpy array), and the state shared by displays.

Layout: one panel per EVSE (side by side, two rows from four EVSEs on), each with its QR code
as large as fits at a whole number of pixels per module, the EvseID, the state and the EVSE
message; a station-wide message in a band along the bottom. Black on white, so the codes are
dark-on-light as scanners expect; with ``color=True`` each panel gets a state-coloured bar.

numpy and OpenCV are imported inside the functions: the core daemon imports this module only
when a graphical display is configured, and even then pays for cv2 on the first frame only.
Text goes through ``cv2.putText`` (Hershey fonts: ASCII only; other characters are
transliterated, e.g. ``…`` -> ``...``, ``ü`` -> ``u``).
"""

# Heavy imports (numpy, OpenCV, pyzbar, segno) are deferred into functions on purpose.

from __future__ import annotations

import logging
import math
import threading
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from drivers.display.base import EvseScreen
from drivers.display.qrcode import DEFAULT_URL_TEMPLATE, cached_matrix, payload_for_screen
from drivers.health import Health

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["ScreenState", "StatefulDisplay", "render_screen", "state_color", "to_ascii"]

log = logging.getLogger(__name__)

WHITE: Final = 255
BLACK: Final = 0
GREY: Final = 160

_TRANSLIT: Final = {
    "\u2026": "...",  # …
    "\u2013": "-",
    "\u2014": "-",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u20ac": "EUR",
    "\u00b0": " deg",
    "\u00df": "ss",
    "\u00a0": " ",
}

# RGB
_STATE_COLORS: Final[tuple[tuple[tuple[str, ...], tuple[int, int, int]], ...]] = (
    (("fault", "error", "unavailable", "inoperative", "reject"), (200, 30, 30)),
    (("charg",), (30, 90, 200)),
    (("avail", "idle", "ready"), (20, 150, 60)),
    (("suspend", "finish", "prepar", "occupied", "reserved", "auth"), (220, 150, 0)),
)
_NEUTRAL: Final = (120, 120, 120)


def to_ascii(text: str) -> str:
    """Transliterate ``text`` to printable ASCII for the Hershey fonts (unknown -> ``?``)."""
    out: list[str] = []
    for ch in text:
        if " " <= ch <= "~":
            out.append(ch)
            continue
        if ch in _TRANSLIT:
            out.append(_TRANSLIT[ch])
            continue
        if ch in "\t\r\n":
            out.append(" ")
            continue
        base = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode("ascii")
        base = "".join(c for c in base if " " <= c <= "~")
        out.append(base or "?")
    return "".join(out)


def state_color(state: str) -> tuple[int, int, int]:
    """An RGB colour for an EVSE state name (by keyword, case-insensitive)."""
    low = state.lower()
    for words, rgb in _STATE_COLORS:
        if any(w in low for w in words):
            return rgb
    return _NEUTRAL


@dataclass(frozen=True)
class _Box:
    x: int
    y: int
    w: int
    h: int


def render_screen(
    screens: Sequence[EvseScreen],
    message: str | None = None,
    *,
    width: int = 800,
    height: int = 480,
    color: bool = False,
    url_template: str | None = DEFAULT_URL_TEMPLATE,
) -> NDArray[np.uint8]:
    """Draw the station screen: ``height x width`` grey (uint8), or ``height x width x 3`` RGB.

    ``screens`` are drawn in the given order. Each EVSE's code is
    :func:`~drivers.display.qrcode.payload_for_screen` (its ``qr_payload``, else the Intercharge
    URL from ``url_template``; ``None`` draws no code). A code that does not fit at one pixel per
    module is replaced by the text "QR code does not fit".
    """
    import numpy as np

    if width < 32 or height < 32:
        raise ValueError(f"screen too small: {width}x{height}")
    img = np.full((height, width, 3), WHITE, dtype=np.uint8)
    margin = max(4, height // 60)

    band_h = 0
    if message:
        band_h = max(24, height // 8)
        band = _Box(0, height - band_h, width, band_h)
        img[band.y : band.y + 1, :, :] = GREY
        _put_text(img, message, _inset(band, margin), BLACK, bold=True)

    n = len(screens)
    if n == 0:
        if not message:
            _put_text(img, "Starting...", _Box(0, height // 3, width, height // 6), BLACK)
    else:
        rows = 1 if n <= 3 else 2
        cols = math.ceil(n / rows)
        avail_h = height - band_h
        cell_w, cell_h = width // cols, avail_h // rows
        for i, screen in enumerate(screens):
            r, c = divmod(i, cols)
            cell = _Box(c * cell_w, r * cell_h, cell_w, cell_h)
            _draw_panel(img, screen, cell, margin, color=color, url_template=url_template)
            if c > 0:
                img[cell.y : cell.y + cell.h, cell.x : cell.x + 1, :] = GREY
            if r > 0:
                img[cell.y : cell.y + 1, cell.x : cell.x + cell.w, :] = GREY

    if color:
        return img
    return np.ascontiguousarray(img[:, :, 0])


def _inset(box: _Box, m: int) -> _Box:
    return _Box(box.x + m, box.y + m, max(1, box.w - 2 * m), max(1, box.h - 2 * m))


def _draw_panel(
    img: NDArray[np.uint8],
    screen: EvseScreen,
    cell: _Box,
    margin: int,
    *,
    color: bool,
    url_template: str | None,
) -> None:
    inner = _inset(cell, margin)
    bar_h = max(4, cell.h // 60) if color else 0
    if color:
        img[inner.y : inner.y + bar_h, inner.x : inner.x + inner.w, :] = state_color(screen.state)
    line_h = max(14, min(44, inner.h // 10))
    msg_h = max(16, min(56, inner.h // 8))
    text_h = 2 * line_h + msg_h + margin
    qr_box = _Box(inner.x, inner.y + bar_h, inner.w, max(0, inner.h - bar_h - text_h))
    y = qr_box.y + qr_box.h
    _put_text(img, screen.evse_id, _Box(inner.x, y, inner.w, line_h), BLACK, bold=True)
    y += line_h
    _put_text(img, screen.state, _Box(inner.x, y, inner.w, line_h), 90)
    y += line_h + margin
    _put_text(img, screen.message, _Box(inner.x, y, inner.w, msg_h), BLACK, bold=True)

    payload = payload_for_screen(screen, url_template)
    if payload is None or qr_box.h <= 0:
        return
    try:
        matrix = cached_matrix(payload)
    except Exception as err:  # noqa: BLE001 - segno's DataOverflowError & co: draw, don't die
        log.warning("cannot make a QR code for EVSE %s: %s", screen.evse_id, err)
        _put_text(img, "QR code unavailable", qr_box, BLACK)
        return
    _blit_matrix(img, matrix, qr_box)


def _blit_matrix(img: NDArray[np.uint8], matrix: tuple[tuple[bool, ...], ...], box: _Box) -> None:
    import numpy as np

    n = len(matrix)
    scale = min(box.w, box.h) // n if n else 0
    if scale < 1:
        _put_text(img, "QR code does not fit", box, BLACK)
        return
    modules = np.array(matrix, dtype=bool)
    block = np.where(modules, BLACK, WHITE).astype(np.uint8)
    block = np.repeat(np.repeat(block, scale, axis=0), scale, axis=1)
    side = n * scale
    x0 = box.x + (box.w - side) // 2
    y0 = box.y + (box.h - side) // 2
    img[y0 : y0 + side, x0 : x0 + side, :] = block[:, :, None]


def _put_text(
    img: NDArray[np.uint8],
    text: str,
    box: _Box,
    value: int | tuple[int, int, int],
    *,
    bold: bool = False,
) -> None:
    """Draw ``text`` centred in ``box``, as large as fits; cut with "..." when even the smallest
    size is too wide."""
    import cv2

    text = to_ascii(text).strip()
    if not text or box.h < 6 or box.w < 6:
        return
    font = cv2.FONT_HERSHEY_SIMPLEX
    (w1, h1), base1 = cv2.getTextSize(text, font, 1.0, 2)
    scale = min(box.h * 0.8 / (h1 + base1), 3.0)
    min_scale = 0.35
    if w1 * scale > box.w:
        scale = max(min_scale, box.w / w1)
    thickness = max(1, round(scale * (2.2 if bold else 1.4)))
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    if tw > box.w and scale > min_scale:  # the stroke made it wider: smaller, before any cut
        scale = max(min_scale, scale * box.w / tw)
        (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    while tw > box.w and len(text) > 1:
        text = text[:-4].rstrip() + "..." if len(text) > 4 else text[:-1]
        (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    x = box.x + max(0, (box.w - tw) // 2)
    y = box.y + (box.h + th) // 2 - base // 2
    rgb = (value, value, value) if isinstance(value, int) else value
    cv2.putText(img, text, (x, y), font, scale, rgb, thickness, cv2.LINE_AA)


class ScreenState:
    """What a display currently shows, with change detection and a health record.

    Thread-safe. The drivers keep one and redraw only when :meth:`update` or
    :meth:`set_message` report a change.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._screens: dict[str, EvseScreen] = {}
        self._message = ""
        self._health = Health.healthy()
        self.closed = False

    def update(self, screen: EvseScreen) -> bool:
        """Record ``screen``; ``True`` when it differs from what is shown for that EVSE."""
        with self.lock:
            if self.closed or self._screens.get(screen.evse_id) == screen:
                return False
            self._screens[screen.evse_id] = screen
            return True

    def set_message(self, text: str) -> bool:
        with self.lock:
            if self.closed or text == self._message:
                return False
            self._message = text
            return True

    def snapshot(self) -> tuple[tuple[EvseScreen, ...], str]:
        with self.lock:
            return tuple(self._screens.values()), self._message

    def ok(self) -> None:
        with self.lock:
            if not self._health.ok:
                log.info("display recovered")
            self._health = Health.healthy()

    def fail(self, fault: str, detail: str) -> None:
        with self.lock:
            if self._health.fault != fault:
                log.warning("display fault %s: %s", fault, detail)
            self._health = Health(ok=False, fault=fault, detail=detail)

    def health(self) -> Health:
        with self.lock:
            return self._health

    def close(self) -> None:
        with self.lock:
            self.closed = True


class StatefulDisplay(ABC):
    """The :class:`~drivers.display.base.Display` methods of the drivers that redraw the whole
    screen from a :class:`ScreenState`: :meth:`_redraw` runs (under the state lock) only when
    :meth:`show` or :meth:`show_message` change what is shown."""

    def __init__(self) -> None:
        self._state = ScreenState()

    def show(self, screen: EvseScreen) -> None:
        with self._state.lock:
            if self._state.update(screen):
                self._redraw()

    def show_message(self, text: str) -> None:
        with self._state.lock:
            if self._state.set_message(text):
                self._redraw()

    def shutdown(self) -> None:
        self._state.close()

    def health(self) -> Health:
        return self._state.health()

    @property
    @abstractmethod
    def simulated(self) -> bool:
        """False for every real display; see :class:`drivers.display.base.Display`."""

    @abstractmethod
    def _redraw(self) -> None:
        """Draw the current snapshot; record the outcome with ``self._state.ok()``/``fail()``."""
