"""The Intercharge QR code of an EVSE: its payload, its module matrix, a text drawing of it.

Payload
-------
The code is a URL carrying the EvseID in the ``evseid`` query parameter (what the
Intercharge/Hubject apps read), by default ``http://m.intercharge.eu/qr?evseid={evse_id}``.

URL encoding of the EvseID: every character outside the RFC 3986 *unreserved* set
(``A-Z a-z 0-9 - . _ ~``) is percent-encoded, except ``*``. ``*`` is a sub-delimiter that
RFC 3986 allows literally in a query, URL parsers (``urllib.parse.parse_qs``, browsers, the
apps) pass it through unchanged, and codes in the field show it as is
(``...?evseid=CH*ION*E213604``); keeping it also keeps the code small. ``+`` (DIN style
``+49*810*000*438``) *is* encoded, as ``%2B``: in a query ``+`` means a space to
form decoders. So ``parse_qs(urlsplit(payload).query)["evseid"] == [evse_id]`` for every
valid EvseID and the default template.

Only segno is needed here (imported lazily); no numpy, no OpenCV.
"""

# Heavy imports (numpy, OpenCV, pyzbar, segno) are deferred into functions on purpose.

from __future__ import annotations

import contextlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Final, Literal
from urllib.parse import quote

from drivers.display.base import EvseScreen
from drivers.identifiers import is_evse_id

__all__ = [
    "DEFAULT_URL_TEMPLATE",
    "QUIET_ZONE",
    "ErrorLevel",
    "cached_matrix",
    "intercharge_payload",
    "matrix_to_halfblocks",
    "payload_for_screen",
    "qr_matrix",
    "render_for_cli",
    "write_png_atomic",
]

DEFAULT_URL_TEMPLATE: Final = "http://m.intercharge.eu/qr?evseid={evse_id}"
QUIET_ZONE: Final = 4  # modules of light border around the symbol (ISO/IEC 18004 minimum)
_PLACEHOLDER: Final = "{evse_id}"
_SAFE_IN_QUERY: Final = "*"  # besides the unreserved characters, which quote() never encodes

ErrorLevel = Literal["m", "q", "h"]

# Half blocks: the upper text cell half is one module row, the lower half the next.
_UPPER: Final = "\u2580"  # ▀
_LOWER: Final = "\u2584"  # ▄
_FULL: Final = "\u2588"  # █


def intercharge_payload(evse_id: str, url_template: str = DEFAULT_URL_TEMPLATE) -> str:
    """The QR payload for ``evse_id``: ``url_template`` with ``{evse_id}`` replaced.

    The EvseID is URL-encoded as described in the module docstring. Raises
    :class:`ValueError` for an invalid EvseID or a template without ``{evse_id}``. The template
    is filled by plain substitution (not ``str.format``), so other braces in it are kept.
    """
    if not isinstance(evse_id, str) or not is_evse_id(evse_id):
        raise ValueError(
            f"not a valid EvseID: {evse_id!r} (expected e.g. DE*AB7*E840*6487 or +49*810*000*438)"
        )
    if _PLACEHOLDER not in url_template:
        raise ValueError(f"QR URL template {url_template!r} has no {_PLACEHOLDER} placeholder")
    return url_template.replace(_PLACEHOLDER, quote(evse_id, safe=_SAFE_IN_QUERY))


def payload_for_screen(screen: EvseScreen, url_template: str | None) -> str | None:
    """What QR code a display draws for ``screen``.

    ``screen.qr_payload`` when the daemon set one; otherwise the Intercharge URL for the EVSE
    built from ``url_template``, or no code at all when ``url_template`` is ``None`` or the
    EVSE id is not a valid EvseID.
    """
    if screen.qr_payload:
        return screen.qr_payload
    if url_template is None:
        return None
    try:
        return intercharge_payload(screen.evse_id, url_template)
    except ValueError:
        return None


@lru_cache(maxsize=64)
def _matrix(payload: str, error: ErrorLevel, border: int) -> tuple[tuple[bool, ...], ...]:
    import segno

    # boost_error: segno raises the level above ``error`` when that fits in the same version.
    code = segno.make(payload, error=error, micro=False, boost_error=True)
    return tuple(tuple(bool(v) for v in row) for row in code.matrix_iter(scale=1, border=border))


def qr_matrix(
    payload: str, *, error: ErrorLevel = "m", border: int = QUIET_ZONE
) -> list[list[bool]]:
    """The QR code for ``payload`` as rows of modules, ``True`` = dark, quiet zone included.

    Error correction ``error`` (M by default, or better when that fits in the same version);
    never a Micro QR code. Made by segno; results are cached.
    """
    if error not in ("m", "q", "h"):
        raise ValueError(f"error correction level must be 'm', 'q' or 'h', not {error!r}")
    if border < 0:
        raise ValueError("border must be >= 0")
    return [list(row) for row in _matrix(payload, error, border)]


def cached_matrix(
    payload: str, *, error: ErrorLevel = "m", border: int = QUIET_ZONE
) -> tuple[tuple[bool, ...], ...]:
    """Like :func:`qr_matrix` but returns the shared, immutable cached rows."""
    if error not in ("m", "q", "h"):
        raise ValueError(f"error correction level must be 'm', 'q' or 'h', not {error!r}")
    return _matrix(payload, error, border)


def matrix_to_halfblocks(
    matrix: list[list[bool]] | tuple[tuple[bool, ...], ...], *, dark_background: bool = True
) -> list[str]:
    """Draw a module matrix with Unicode half blocks, two module rows per text line.

    ``dark_background=True`` (the usual terminal: light text on dark) paints the *light*
    modules, so the terminal background supplies the dark ones; ``False`` paints the dark
    modules, for light-background terminals and paper. An odd last row is paired with a light
    row (more quiet zone).
    """
    rows = [list(r) for r in matrix]
    if not rows:
        return []
    width = len(rows[0])
    if len(rows) % 2:
        rows.append([False] * width)
    lines: list[str] = []
    for top, bottom in zip(rows[0::2], rows[1::2], strict=True):
        chars = []
        for t_dark, b_dark in zip(top, bottom, strict=True):
            t_ink = (not t_dark) if dark_background else t_dark
            b_ink = (not b_dark) if dark_background else b_dark
            if t_ink and b_ink:
                chars.append(_FULL)
            elif t_ink:
                chars.append(_UPPER)
            elif b_ink:
                chars.append(_LOWER)
            else:
                chars.append(" ")
        lines.append("".join(chars))
    return lines


def write_png_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Readers never see a half-written file. Raises :class:`OSError`.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def render_for_cli(
    evse_id: str,
    url_template: str = DEFAULT_URL_TEMPLATE,
    png_path: str | None = None,
    terminal: bool = True,
    *,
    dark_background: bool = True,
    png_scale: int = 10,
) -> str:
    """For ``stationctl qr show EVSE_ID [--png FILE | --terminal]``: the text to print.

    Always includes the EvseID and the payload. With ``terminal`` the code is drawn with half
    blocks (scan it from the screen with a phone). With ``png_path`` a sticker-ready PNG of the
    code alone (``png_scale`` pixels per module, quiet zone included) is written there
    atomically, via segno, without numpy/OpenCV. Raises :class:`ValueError` for an invalid
    EvseID or template and :class:`OSError` when the PNG cannot be written.
    """
    import io

    import segno

    payload = intercharge_payload(evse_id, url_template)
    lines: list[str] = []
    if terminal:
        lines.extend(matrix_to_halfblocks(cached_matrix(payload), dark_background=dark_background))
        lines.append("")
    lines.append(f"EVSE:    {evse_id}")
    lines.append(f"Payload: {payload}")
    if png_path is not None:
        buf = io.BytesIO()
        segno.make(payload, error="m", micro=False, boost_error=True).save(
            buf, kind="png", scale=max(1, png_scale), border=QUIET_ZONE
        )
        write_png_atomic(png_path, buf.getvalue())
        lines.append(f"PNG:     {png_path}")
    return "\n".join(lines) + "\n"
