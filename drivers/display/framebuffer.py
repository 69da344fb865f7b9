"""A display on a Linux framebuffer device (``/dev/fbN``): small TFT panels, HDMI consoles.

Geometry comes from the constructor or, for whatever is not given, from sysfs
(``/sys/class/graphics/fbN/``): ``virtual_size`` ("800,480"; a smaller first entry of ``modes``
such as "U:800x480p-0" wins, for drivers that allocate a taller virtual area for panning),
``bits_per_pixel`` and ``stride`` (bytes per line). It is read at the first frame, not in the
constructor. Pixel formats:

* 16 bpp: RGB565, little endian (``swap_rb=True``: BGR565)
* 24 bpp: bytes B, G, R (``swap_rb=True``: R, G, B)
* 32 bpp: XRGB8888 little endian, i.e. bytes B, G, R, 0xFF (``swap_rb=True``: R, G, B, 0xFF)

Every change writes a whole frame from offset 0 (the device is opened per frame, write-only,
never created or truncated). Errors go to :meth:`FramebufferDisplay.health`, not to the caller.
The text console's cursor may blink over the picture; disable it on the kernel command line
(``vt.global_cursor_default=0``) or run the agent without a console on that framebuffer.
"""

# Heavy imports (numpy, OpenCV, pyzbar, segno) are deferred into functions on purpose.

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from drivers.display.qrcode import DEFAULT_URL_TEMPLATE
from drivers.display.render import StatefulDisplay, render_screen
from drivers.errors import DriverError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["FbGeometry", "FramebufferDisplay", "pack_frame", "read_geometry"]

SUPPORTED_BPP = (16, 24, 32)
_MODE_RE = re.compile(r"^[A-Za-z]*:?(\d+)x(\d+)")


@dataclass(frozen=True)
class FbGeometry:
    width: int
    height: int
    bits_per_pixel: int
    stride: int  # bytes per line (>= width * bits_per_pixel / 8)

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"bad framebuffer size {self.width}x{self.height}")
        if self.bits_per_pixel not in SUPPORTED_BPP:
            raise ValueError(
                f"unsupported framebuffer depth {self.bits_per_pixel} bpp; "
                f"supported: {', '.join(map(str, SUPPORTED_BPP))}"
            )
        if self.stride < self.width * self.bits_per_pixel // 8:
            raise ValueError(
                f"stride {self.stride} is smaller than a line "
                f"({self.width} px x {self.bits_per_pixel // 8} bytes)"
            )


def read_geometry(
    device: str,
    *,
    width: int | None = None,
    height: int | None = None,
    bits_per_pixel: int | None = None,
    stride: int | None = None,
    sysfs_dir: str | os.PathLike[str] | None = None,
) -> FbGeometry:
    """Complete the given geometry from sysfs; raises :class:`DriverError` when it cannot."""
    if None not in (width, height, bits_per_pixel):
        assert width is not None and height is not None and bits_per_pixel is not None
        return _geometry(width, height, bits_per_pixel, stride)
    base = (
        Path(sysfs_dir)
        if sysfs_dir is not None
        else (Path("/sys/class/graphics") / Path(device).name)
    )
    try:
        if width is None or height is None:
            vw, vh = (int(v) for v in _read(base / "virtual_size").split(","))
            mode = _first_mode(base)
            if mode is not None and mode[0] <= vw and mode[1] <= vh:
                vw, vh = mode
            width = vw if width is None else width
            height = vh if height is None else height
        if bits_per_pixel is None:
            bits_per_pixel = int(_read(base / "bits_per_pixel"))
        if stride is None and (base / "stride").exists():
            stride = int(_read(base / "stride"))
    except (OSError, ValueError) as err:
        raise DriverError(
            f"cannot read the geometry of framebuffer {device} from {base}: {err}; "
            "give width, height and bits_per_pixel explicitly"
        ) from err
    return _geometry(width, height, bits_per_pixel, stride)


def _geometry(width: int, height: int, bpp: int, stride: int | None) -> FbGeometry:
    try:
        return FbGeometry(width, height, bpp, stride if stride else width * bpp // 8)
    except ValueError as err:
        raise DriverError(f"framebuffer geometry: {err}") from err


def _read(path: Path) -> str:
    return path.read_text(encoding="ascii").strip()


def _first_mode(base: Path) -> tuple[int, int] | None:
    try:
        first = _read(base / "modes").splitlines()[0]
    except (OSError, ValueError, IndexError):
        return None
    m = _MODE_RE.match(first.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def pack_frame(rgb: NDArray[np.uint8], geometry: FbGeometry, *, swap_rb: bool = False) -> bytes:
    """Convert an ``H x W x 3`` RGB (or ``H x W`` grey) image to framebuffer bytes.

    The image must be ``geometry.height x geometry.width``; lines are padded to the stride.
    """
    import numpy as np

    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    if rgb.shape[:2] != (geometry.height, geometry.width) or rgb.shape[2] != 3:
        raise ValueError(
            f"image is {rgb.shape}, framebuffer is {geometry.height}x{geometry.width}x3"
        )
    r = rgb[:, :, 0]
    g = rgb[:, :, 1]
    b = rgb[:, :, 2]
    if swap_rb:
        r, b = b, r
    bpp = geometry.bits_per_pixel
    if bpp == 16:
        value = (
            ((r.astype(np.uint16) >> 3) << 11)
            | ((g.astype(np.uint16) >> 2) << 5)
            | (b.astype(np.uint16) >> 3)
        )
        line = value.astype("<u2").view(np.uint8).reshape(geometry.height, geometry.width * 2)
    elif bpp == 24:
        line = np.stack([b, g, r], axis=2).reshape(geometry.height, geometry.width * 3)
    else:
        alpha = np.full_like(r, 0xFF)
        line = np.stack([b, g, r, alpha], axis=2).reshape(geometry.height, geometry.width * 4)
    pad = geometry.stride - line.shape[1]
    if pad:
        line = np.pad(line, ((0, 0), (0, pad)))
    return np.ascontiguousarray(line, dtype=np.uint8).tobytes()


class FramebufferDisplay(StatefulDisplay):
    """:class:`~drivers.display.base.Display` on a framebuffer device; no I/O in the constructor."""

    def __init__(
        self,
        device: str = "/dev/fb0",
        *,
        width: int | None = None,
        height: int | None = None,
        bits_per_pixel: int | None = None,
        stride: int | None = None,
        swap_rb: bool = False,
        url_template: str | None = DEFAULT_URL_TEMPLATE,
        sysfs_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.device = device
        self._width = width
        self._height = height
        self._bpp = bits_per_pixel
        self._stride = stride
        self.swap_rb = swap_rb
        self.url_template = url_template
        self.sysfs_dir = sysfs_dir
        self.geometry: FbGeometry | None = None
        self.frames_written = 0
        super().__init__()

    @property
    def simulated(self) -> bool:
        return False

    def _redraw(self) -> None:
        try:
            if self.geometry is None:
                self.geometry = read_geometry(
                    self.device,
                    width=self._width,
                    height=self._height,
                    bits_per_pixel=self._bpp,
                    stride=self._stride,
                    sysfs_dir=self.sysfs_dir,
                )
        except DriverError as err:
            self._state.fail("framebuffer_geometry", str(err))
            return
        geo = self.geometry
        screens, message = self._state.snapshot()
        img = render_screen(
            screens,
            message,
            width=geo.width,
            height=geo.height,
            color=True,
            url_template=self.url_template,
        )
        data = pack_frame(img, geo, swap_rb=self.swap_rb)
        try:
            fd = os.open(self.device, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                view = memoryview(data)
                offset = 0
                while offset < len(view):
                    n = os.pwrite(fd, view[offset:], offset)
                    if n <= 0:
                        raise OSError(f"short write at byte {offset}")
                    offset += n
            finally:
                os.close(fd)
        except OSError as err:
            self._state.fail(
                "framebuffer_write_failed",
                f"cannot write {self.device}: {err.strerror or err}; check that the device "
                "exists and the agent's user is in the 'video' group",
            )
            return
        self.frames_written += 1
        self._state.ok()
