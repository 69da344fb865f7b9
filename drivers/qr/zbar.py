"""zbar on a grey frame, QR codes only, returning each code's raw bytes as text.

pyzbar's own ``decode`` hands back what zbar made of the bytes: zbar guesses a character set and
converts to UTF-8, and on Japanese payloads it guesses wrong (Shift-JIS half-width katakana and
plain UTF-8 Japanese came out as Chinese characters on zxing's photo set ``qrcode-2``). Here the
scanner runs in zbar's binary mode (``ZBAR_CFG_BINARY``, zbar >= 0.23.1): the bytes come back
untouched and :func:`bytes_to_text` picks the character set.

The calls are pyzbar's ctypes bindings (``pyzbar.wrapper``); importing this module does not load
libzbar, :func:`scan` does (and raises :class:`~drivers.errors.DriverError` when it is missing).
"""

# Heavy imports (pyzbar, which loads libzbar) are deferred into functions on purpose.

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, Final

from drivers.errors import DriverError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["bytes_to_text", "scan"]

_CFG_ENABLE: Final = 0
_CFG_BINARY: Final = 4  # zbar.h: ZBAR_CFG_BINARY, "don't convert binary data to text"
_SYM_NONE: Final = 0  # all symbologies
_SYM_QRCODE: Final = 64
_FOURCC_Y800: Final = 0x30303859  # 8-bit grey, 'Y800' little-endian


def _wrapper(hint: str) -> Any:
    try:
        from pyzbar import wrapper
    except (ImportError, OSError) as err:  # ImportError also when libzbar0 is missing
        raise DriverError(f"pyzbar / the zbar library is not available: {err}; {hint}") from err
    return wrapper


def bytes_to_text(data: bytes) -> str:
    """A QR code's byte payload as text: UTF-8 when it is valid UTF-8 (what today's generators
    write), else Shift-JIS (Japanese phones' default), else ISO-8859-1 (the QR standard's default
    for byte mode, which cannot fail)."""
    for charset in ("utf-8", "shift_jis"):
        try:
            return data.decode(charset)
        except UnicodeDecodeError:
            continue
    return data.decode("iso-8859-1")


def scan(gray: NDArray[np.uint8], install_hint: str) -> list[str]:
    """The texts of the QR codes zbar finds in ``gray`` (2-D, uint8, C-contiguous)."""
    w = _wrapper(install_hint)
    height, width = gray.shape
    data = gray.tobytes()
    buf = ctypes.c_char_p(data)  # points into ``data``, which outlives the scan
    scanner = w.zbar_image_scanner_create()
    try:
        w.zbar_image_scanner_set_config(scanner, _SYM_NONE, _CFG_ENABLE, 0)
        w.zbar_image_scanner_set_config(scanner, _SYM_QRCODE, _CFG_ENABLE, 1)
        w.zbar_image_scanner_set_config(scanner, _SYM_QRCODE, _CFG_BINARY, 1)
        image = w.zbar_image_create()
        try:
            w.zbar_image_set_format(image, _FOURCC_Y800)
            w.zbar_image_set_size(image, width, height)
            w.zbar_image_set_data(image, ctypes.cast(buf, ctypes.c_void_p), len(data), None)
            if w.zbar_scan_image(scanner, image) <= 0:
                return []
            texts: list[str] = []
            symbol = w.zbar_image_first_symbol(image)
            while symbol:
                raw = ctypes.string_at(
                    w.zbar_symbol_get_data(symbol), w.zbar_symbol_get_data_length(symbol)
                )
                texts.append(bytes_to_text(raw))
                symbol = w.zbar_symbol_next(symbol)
            return texts
        finally:
            w.zbar_image_destroy(image)
    finally:
        w.zbar_image_scanner_destroy(scanner)
