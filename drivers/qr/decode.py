"""Find and decode QR codes in camera frames and image files.

The pipeline runs stages in order and stops at the first that finds anything:

1. ``pyzbar``           zbar on the grey frame, restricted to QR codes (fast, and the best on
                        small codes)
2. ``pyzbar_otsu``      zbar on a Gaussian-blurred, Otsu-binarised frame (noise, blur)
3. ``pyzbar_adaptive``  zbar on a blurred frame binarised with a local (adaptive) threshold
                        (uneven light, low contrast: where one global threshold fails)
4. ``opencv_aruco``     OpenCV's ``QRCodeDetectorAruco`` (``detectAndDecodeMulti``)

``opencv`` (the classic ``QRCodeDetector``) can be added to ``stages``; on our synthetic test
set it found nothing the others missed, at 10-20 ms a frame. A frame without any code runs all
stages: about 30-50 ms at 640x480 on a CI-class CPU (see ``tests/benchmarks/qr_decode.py``).

OpenCV, numpy and pyzbar are imported on first use; when one is missing the call raises
:class:`~drivers.errors.DriverError` saying what to install.
"""

# Heavy imports (numpy, OpenCV, pyzbar, segno) are deferred into functions on purpose.

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from drivers.errors import DriverError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "ALL_STAGES",
    "DEFAULT_STAGES",
    "Stage",
    "decode_file",
    "decode_image",
    "decode_image_staged",
    "ensure_available",
]

Stage = Literal["pyzbar", "pyzbar_otsu", "pyzbar_adaptive", "opencv_aruco", "opencv"]
ALL_STAGES: Final[tuple[Stage, ...]] = (
    "pyzbar",
    "pyzbar_otsu",
    "pyzbar_adaptive",
    "opencv_aruco",
    "opencv",
)
DEFAULT_STAGES: Final[tuple[Stage, ...]] = (
    "pyzbar",
    "pyzbar_otsu",
    "pyzbar_adaptive",
    "opencv_aruco",
)

_INSTALL_HINT: Final = (
    "install the QR extra: pip install 'station-agent[qr]' "
    "(and the zbar library: apt-get install --no-install-recommends libzbar0)"
)
_MAX_FILE_BYTES: Final = 64 * 1024 * 1024
_BLUR_KSIZE: Final = 5
_ADAPTIVE_BLOCK: Final = 41  # px, about 2-4 modules of a typical code; must be odd
_ADAPTIVE_C: Final = 3

_local = threading.local()  # OpenCV detector objects are not shared between threads


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as err:
        raise DriverError(f"OpenCV (cv2) is not available: {err}; {_INSTALL_HINT}") from err
    return cv2


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
    for stage in stages:
        found = _STAGE_FUNCS[stage](gray)
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


def _zbar(gray: NDArray[np.uint8]) -> list[str]:
    pyzbar = _pyzbar()
    results = pyzbar.decode(gray, symbols=[pyzbar.ZBarSymbol.QRCODE])
    return _unique([r.data.decode("utf-8", errors="replace") for r in results])


def _zbar_otsu(gray: NDArray[np.uint8]) -> list[str]:
    cv2 = _cv2()
    blurred = cv2.GaussianBlur(gray, (_BLUR_KSIZE, _BLUR_KSIZE), 0)
    _thr, binary = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return _zbar(binary)


def _zbar_adaptive(gray: NDArray[np.uint8]) -> list[str]:
    cv2 = _cv2()
    blurred = cv2.GaussianBlur(gray, (_BLUR_KSIZE, _BLUR_KSIZE), 0)
    binary = cv2.adaptiveThreshold(
        blurred,
        255,
        cv2.ADAPTIVE_THRESH_MEAN_C,
        cv2.THRESH_BINARY,
        _ADAPTIVE_BLOCK,
        _ADAPTIVE_C,
    )
    return _zbar(binary)


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
    except cv2.error:
        return []
    if not ok:
        return []
    return _unique([t for t in texts if t])


def _opencv_aruco(gray: NDArray[np.uint8]) -> list[str]:
    return _opencv_with("aruco", gray)


def _opencv(gray: NDArray[np.uint8]) -> list[str]:
    return _opencv_with("classic", gray)


_STAGE_FUNCS: Final[dict[str, Callable[[NDArray[np.uint8]], list[str]]]] = {
    "pyzbar": _zbar,
    "pyzbar_otsu": _zbar_otsu,
    "pyzbar_adaptive": _zbar_adaptive,
    "opencv_aruco": _opencv_aruco,
    "opencv": _opencv,
}
