"""Find and decode QR codes in camera frames and image files.

The pipeline runs stages in order and stops at the first that finds anything. The default
(:data:`DEFAULT_STAGES`) keeps only stages that measurably add decodes (``python
tests/benchmarks/qr_decode.py --ablate`` shows what each one adds, on zxing's photo sets with
``--photos DIR`` and on the generated frame classes):

1. ``zxing``            zxing-cpp (C++ core, local-average binariser, inverted codes too,
                        Shift-JIS / ECI / UTF-8 text): sub-millisecond, reads most frames
2. ``zxing_blurred``    zxing-cpp on a Gaussian-blurred frame (sensor noise, JPEG grain)
3. ``pyzbar_adaptive``  zbar, the fallback decoder, on a blurred frame binarised with a local
                        (adaptive) threshold (uneven light, low contrast, noise)
4. ``zxing_upscaled``   zxing-cpp on the frame enlarged 2x (modules of 1-3 px)
5. ``opencv_curved``    OpenCV's ``QRCodeDetector.detectAndDecodeCurved`` (codes on bent paper)

The last two are slow (3-60 ms) and run only when an earlier zxing stage saw a QR symbol it could
not read (zxing-cpp reports such symbols with their error): a frame with no code at all never
pays for them. Measured and dropped from the default because they added no decode beside the
others: zbar on the plain frame (``pyzbar``), zbar after Otsu, OpenCV's Aruco and classic
detectors, zxing-cpp after an adaptive threshold.

They can still be named in ``stages``: ``pyzbar``, ``pyzbar_half`` (zbar on a 0.5x frame),
``pyzbar_otsu``, ``zxing_adaptive``, ``opencv_aruco`` (``QRCodeDetectorAruco``) and ``opencv``
(the classic ``QRCodeDetector``).

Payload bytes become text by the code's ECI when it declares one (zxing-cpp only), else UTF-8 if
valid, else Shift-JIS, else ISO-8859-1: zxing-cpp does this itself, zbar runs in binary mode and
:func:`drivers.qr.zbar.bytes_to_text` does it (zbar's own guess turned Japanese into mojibake).

zxing-cpp, OpenCV, numpy and pyzbar are imported on first use; when one is missing the call
raises :class:`~drivers.errors.DriverError` saying what to install.
"""

# Heavy imports (numpy, OpenCV, pyzbar, zxing-cpp) are deferred into functions on purpose.

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from drivers.errors import DriverError
from drivers.qr import zbar

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "ALL_STAGES",
    "DEFAULT_STAGES",
    "GATED_STAGES",
    "Stage",
    "decode_file",
    "decode_image",
    "decode_image_staged",
    "ensure_available",
]

Stage = Literal[
    "zxing",
    "zxing_blurred",
    "zxing_adaptive",
    "zxing_upscaled",
    "pyzbar",
    "pyzbar_half",
    "pyzbar_otsu",
    "pyzbar_adaptive",
    "opencv_aruco",
    "opencv_curved",
    "opencv",
]
ALL_STAGES: Final[tuple[Stage, ...]] = (
    "zxing",
    "zxing_blurred",
    "zxing_adaptive",
    "zxing_upscaled",
    "pyzbar",
    "pyzbar_half",
    "pyzbar_otsu",
    "pyzbar_adaptive",
    "opencv_aruco",
    "opencv_curved",
    "opencv",
)
DEFAULT_STAGES: Final[tuple[Stage, ...]] = (
    "zxing",
    "zxing_blurred",
    "pyzbar_adaptive",
    "zxing_upscaled",
    "opencv_curved",
)
GATED_STAGES: Final[frozenset[Stage]] = frozenset({"zxing_upscaled", "opencv_curved"})
"""Run only when an earlier zxing stage saw a symbol it could not read (or none ran)."""

_INSTALL_HINT: Final = (
    "install the QR extra: pip install 'station-agent[qr]' "
    "(and the zbar library: apt-get install --no-install-recommends libzbar0)"
)
_MAX_FILE_BYTES: Final = 64 * 1024 * 1024
_BLUR_KSIZE: Final = 5
_ADAPTIVE_BLOCK: Final = 41  # px, about 2-4 modules of a typical code; must be odd
_ADAPTIVE_C: Final = 3
_UPSCALE_MAX_SIDE: Final = 2048  # frames larger than this are not enlarged

_local = threading.local()  # OpenCV detector objects are not shared between threads


@dataclass(kw_only=True)
class _Frame:
    """One grey frame on its way through the stages."""

    gray: NDArray[np.uint8]
    symbol_seen: bool | None = None  # None: no zxing stage ran yet


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as err:
        raise DriverError(f"OpenCV (cv2) is not available: {err}; {_INSTALL_HINT}") from err
    return cv2


def _zxingcpp() -> Any:
    try:
        import zxingcpp
    except ImportError as err:
        raise DriverError(f"zxing-cpp is not available: {err}; {_INSTALL_HINT}") from err
    return zxingcpp


def _pyzbar() -> Any:
    try:
        from pyzbar import pyzbar
    except (ImportError, OSError) as err:  # ImportError also when libzbar0 is missing
        raise DriverError(
            f"pyzbar / the zbar library is not available: {err}; {_INSTALL_HINT}"
        ) from err
    return pyzbar


def ensure_available(stages: Sequence[Stage] = DEFAULT_STAGES) -> None:
    """Import what ``stages`` need now; raises :class:`DriverError` naming what to install."""
    _check_stages(stages)
    _cv2()
    if any(s.startswith("zxing") for s in stages):
        _zxingcpp()
    if any(s.startswith("pyzbar") for s in stages):
        _pyzbar()


def _check_stages(stages: Sequence[Stage]) -> None:
    bad = [s for s in stages if s not in ALL_STAGES]
    if bad or not stages:
        raise ValueError(f"unknown decode stages {bad!r}; choose from {ALL_STAGES}")


def decode_image(img: NDArray[Any], *, stages: Sequence[Stage] = DEFAULT_STAGES) -> list[str]:
    """The texts of the QR codes in ``img`` (BGR, BGRA or grey numpy array), without repeats.

    Empty when no code was found. Raises :class:`ValueError` for an array that is not an image
    and :class:`DriverError` when a library is missing.
    """
    payloads, _stage = decode_image_staged(img, stages=stages)
    return payloads


def decode_image_staged(
    img: NDArray[Any], *, stages: Sequence[Stage] = DEFAULT_STAGES
) -> tuple[list[str], Stage | None]:
    """Like :func:`decode_image`, also telling which stage found the codes (for benchmarks)."""
    _check_stages(stages)
    gray = _to_gray(img)
    if gray.size == 0:
        return [], None
    frame = _Frame(gray=gray)
    for stage in stages:
        if stage in GATED_STAGES and frame.symbol_seen is False:
            continue
        found = _STAGE_FUNCS[stage](frame)
        if found:
            return found, stage
    return [], None


def decode_file(
    path: str | os.PathLike[str], *, stages: Sequence[Stage] = DEFAULT_STAGES
) -> list[str]:
    """Decode the QR codes in an image file (PNG, JPEG, BMP, ... whatever OpenCV reads).

    Raises :class:`DriverError` when the file cannot be read or is not a readable image.
    """
    cv2 = _cv2()  # first: a missing OpenCV (which brings numpy) becomes a DriverError
    import numpy as np

    p = Path(path)
    try:
        size = p.stat().st_size
        if size > _MAX_FILE_BYTES:
            raise DriverError(f"image {p} is too large ({size} bytes)")
        data = p.read_bytes()
    except OSError as err:
        raise DriverError(f"cannot read image {p}: {err.strerror or err}") from err
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DriverError(f"{p} is not an image OpenCV can read")
    return decode_image(img, stages=stages)


# ----------------------------------------------------------------------------- internals


def _to_gray(img: NDArray[Any]) -> NDArray[np.uint8]:
    cv2 = _cv2()
    import numpy as np

    if not isinstance(img, np.ndarray):
        raise ValueError(f"expected a numpy image, got {type(img).__name__}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ValueError(f"expected a grey, BGR or BGRA image, got shape {img.shape}")
    if img.size == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    if img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 3:
        code = cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        img = cv2.cvtColor(img, code)
    gray: NDArray[np.uint8] = np.ascontiguousarray(img)
    return gray


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _blurred(gray: NDArray[np.uint8]) -> NDArray[np.uint8]:
    blurred: NDArray[np.uint8] = _cv2().GaussianBlur(gray, (_BLUR_KSIZE, _BLUR_KSIZE), 0)
    return blurred


def _adaptive(gray: NDArray[np.uint8]) -> NDArray[np.uint8]:
    cv2 = _cv2()
    binary: NDArray[np.uint8] = cv2.adaptiveThreshold(
        _blurred(gray),
        255,
        cv2.ADAPTIVE_THRESH_MEAN_C,
        cv2.THRESH_BINARY,
        _ADAPTIVE_BLOCK,
        _ADAPTIVE_C,
    )
    return binary


def _zxing_on(frame: _Frame, gray: NDArray[np.uint8], *, binary: bool = False) -> list[str]:
    """zxing-cpp on ``gray``; notes in ``frame`` whether it saw a symbol it could not read."""
    zx = _zxingcpp()
    results = zx.read_barcodes(
        gray,
        formats=zx.BarcodeFormat.QRCode,
        text_mode=zx.TextMode.Plain,  # the payload itself (HRI would rewrite control chars)
        binarizer=zx.Binarizer.BoolCast if binary else zx.Binarizer.LocalAverage,
        return_errors=True,
    )
    texts = [r.text for r in results if r.valid]
    seen = len(results) > len(texts)
    frame.symbol_seen = bool(frame.symbol_seen) or seen
    return _unique(texts)


def _zxing(frame: _Frame) -> list[str]:
    return _zxing_on(frame, frame.gray)


def _zxing_blurred(frame: _Frame) -> list[str]:
    return _zxing_on(frame, _blurred(frame.gray))


def _zxing_adaptive(frame: _Frame) -> list[str]:
    return _zxing_on(frame, _adaptive(frame.gray), binary=True)


def _zxing_upscaled(frame: _Frame) -> list[str]:
    if max(frame.gray.shape) > _UPSCALE_MAX_SIDE:
        return []
    cv2 = _cv2()
    big = cv2.resize(frame.gray, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
    return _zxing_on(frame, big)


def _zbar(gray: NDArray[np.uint8]) -> list[str]:
    return _unique(zbar.scan(gray, _INSTALL_HINT))


def _zbar_plain(frame: _Frame) -> list[str]:
    return _zbar(frame.gray)


def _zbar_half(frame: _Frame) -> list[str]:
    cv2 = _cv2()
    return _zbar(cv2.resize(frame.gray, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))


def _zbar_otsu(frame: _Frame) -> list[str]:
    cv2 = _cv2()
    _thr, binary = cv2.threshold(_blurred(frame.gray), 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return _zbar(binary)


def _zbar_adaptive(frame: _Frame) -> list[str]:
    return _zbar(_adaptive(frame.gray))


def _detector(name: str, factory: Callable[[], Any]) -> Any:
    det = getattr(_local, name, None)
    if det is None:
        det = factory()
        setattr(_local, name, det)
    return det


def _opencv_with(name: str, gray: NDArray[np.uint8]) -> list[str]:
    cv2 = _cv2()
    factory = cv2.QRCodeDetectorAruco if name == "aruco" else cv2.QRCodeDetector
    det = _detector(name, factory)
    try:
        ok, texts, _points, _straight = det.detectAndDecodeMulti(gray)
    except (cv2.error, UnicodeDecodeError):  # a payload that is not UTF-8 (Shift-JIS) raises
        return []
    if not ok:
        return []
    return _unique([t for t in texts if t])


def _opencv_aruco(frame: _Frame) -> list[str]:
    return _opencv_with("aruco", frame.gray)


def _opencv(frame: _Frame) -> list[str]:
    return _opencv_with("classic", frame.gray)


def _opencv_curved(frame: _Frame) -> list[str]:
    cv2 = _cv2()
    det = _detector("classic", cv2.QRCodeDetector)
    try:
        text, _points, _straight = det.detectAndDecodeCurved(frame.gray)
    except (cv2.error, UnicodeDecodeError):
        return []
    return [text] if text else []


_STAGE_FUNCS: Final[dict[str, Callable[[_Frame], list[str]]]] = {
    "zxing": _zxing,
    "zxing_blurred": _zxing_blurred,
    "zxing_adaptive": _zxing_adaptive,
    "zxing_upscaled": _zxing_upscaled,
    "pyzbar": _zbar_plain,
    "pyzbar_half": _zbar_half,
    "pyzbar_otsu": _zbar_otsu,
    "pyzbar_adaptive": _zbar_adaptive,
    "opencv_aruco": _opencv_aruco,
    "opencv_curved": _opencv_curved,
    "opencv": _opencv,
}
