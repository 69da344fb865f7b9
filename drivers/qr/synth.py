"""Synthetic camera frames showing a QR code, for tests, the decode benchmark and demos.

A frame is a code (made with segno) placed on a light, slightly uneven background and then
degraded the way a cheap station camera degrades it. Every frame is determined by its seed.

Classes (see :data:`FRAME_CLASSES`):

* ``clean``        code ~180-240 px wide, sharp, full contrast
* ``rotated``      like clean, turned by 15-30 degrees (either way)
* ``blurred``      Gaussian blur, sigma 1.5-2.2 px (out of focus)
* ``low_contrast`` dark modules at grey 95-120, light ones at 145-170
* ``noisy``        additive Gaussian noise, sigma 18-28 grey levels
* ``small``        the code (without quiet zone) only 80 px wide, about 2.4 px per module
* ``combined``     rotated + blurred + low contrast + noisy, code 150-190 px wide

Sizes scale with the frame height (the numbers above are for 480 px high frames), so a
1280x720 frame shows the same scene at a higher resolution.

numpy, OpenCV and segno are imported inside the functions.
"""

# Heavy imports (numpy, OpenCV, pyzbar, segno) are deferred into functions on purpose.

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["FRAME_CLASSES", "FrameSpec", "frame_spec", "make_frame", "random_evse_id"]

FRAME_CLASSES: Final[tuple[str, ...]] = (
    "clean",
    "rotated",
    "blurred",
    "low_contrast",
    "noisy",
    "small",
    "combined",
)

_REFERENCE_HEIGHT: Final = 480


@dataclass(frozen=True)
class FrameSpec:
    """How one synthetic frame is made (all sizes in pixels of a 480 px high frame)."""

    code_px: float  # width of the code without its quiet zone
    angle_deg: float
    blur_sigma: float
    dark: int
    light: int
    noise_sigma: float
    center_x: float  # fraction of the frame width
    center_y: float  # fraction of the frame height


def frame_spec(kind: str, seed: int) -> FrameSpec:
    """The parameters of frame ``seed`` of class ``kind`` (deterministic)."""
    if kind not in FRAME_CLASSES:
        raise ValueError(f"unknown frame class {kind!r}; expected one of {FRAME_CLASSES}")
    rnd = random.Random(f"{kind}:{seed}")
    code_px = rnd.uniform(180.0, 240.0)
    angle = rnd.uniform(-4.0, 4.0)
    blur = 0.0
    dark, light = rnd.randint(0, 30), rnd.randint(215, 250)
    noise = 2.0
    if kind in ("rotated", "combined"):
        angle = rnd.choice((-1.0, 1.0)) * rnd.uniform(15.0, 30.0)
    if kind == "blurred":
        blur = rnd.uniform(1.5, 2.2)
    if kind in ("low_contrast", "combined"):
        dark, light = rnd.randint(95, 120), rnd.randint(145, 170)
    if kind == "noisy":
        noise = rnd.uniform(18.0, 28.0)
    if kind == "small":
        code_px = 80.0
    if kind == "combined":
        code_px = rnd.uniform(150.0, 190.0)
        blur = rnd.uniform(1.0, 1.6)
        noise = rnd.uniform(10.0, 16.0)
    return FrameSpec(
        code_px=code_px,
        angle_deg=angle,
        blur_sigma=blur,
        dark=dark,
        light=light,
        noise_sigma=noise,
        center_x=rnd.uniform(0.35, 0.65),
        center_y=rnd.uniform(0.4, 0.6),
    )


def random_evse_id(rnd: random.Random) -> str:
    """A valid OICP EvseID, ISO style (``DE*AB7*E840*6487``) or DIN style (``+49*810*000*438``)."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    alnum = letters + "0123456789"
    if rnd.random() < 0.25:
        country = str(rnd.randint(1, 999))
        plus = "+" if rnd.random() < 0.7 else ""
        tail = "".join(rnd.choice("0123456789") for _ in range(rnd.randint(3, 8)))
        return f"{plus}{country}*{rnd.randint(0, 999):03d}*{tail}"
    country = "".join(rnd.choice(letters) for _ in range(2))
    operator = "".join(rnd.choice(alnum) for _ in range(3))
    parts = ["".join(rnd.choice(alnum) for _ in range(rnd.randint(2, 5)))]
    if rnd.random() < 0.5:
        parts.append("".join(rnd.choice(alnum) for _ in range(rnd.randint(1, 5))))
    star = rnd.random() < 0.8
    sep = "*" if star else ""
    return f"{country}{sep}{operator}{sep}E{sep.join(parts)}"


def make_frame(
    payload: str | None,
    kind: str,
    seed: int,
    width: int = 640,
    height: int = 480,
    *,
    color: bool = True,
) -> NDArray[np.uint8]:
    """A ``height x width`` frame (BGR if ``color``, else grey) showing ``payload`` as QR code.

    ``payload=None`` gives the same scene without a code (to measure frames with nothing to find).
    """
    import cv2
    import numpy as np

    spec = frame_spec(kind, seed)
    rng = np.random.default_rng(_seed_int(kind, seed))

    # Background: the light level with a soft gradient and a few darker blotches.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gx, gy = rng.uniform(-0.08, 0.08, size=2)
    img = spec.light * (1.0 + gx * (xx / width - 0.5) + gy * (yy / height - 0.5))
    for _ in range(3):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.1, 0.3) * height
        img -= 25.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))

    if payload is not None:
        img = _place_code(img, payload, spec, width, height)
    if spec.blur_sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), spec.blur_sigma)
    if spec.noise_sigma > 0:
        img = img + rng.normal(0.0, spec.noise_sigma, size=img.shape).astype(np.float32)
    gray: NDArray[np.uint8] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if color:
        bgr: NDArray[np.uint8] = np.asarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), np.uint8)
        return bgr
    return gray


def _place_code(
    bg: NDArray[np.float32], payload: str, spec: FrameSpec, width: int, height: int
) -> NDArray[np.float32]:
    import cv2
    import numpy as np
    import segno

    qr = segno.make(payload, error="m", micro=False)
    border = 4
    modules = np.array(
        [[bool(v) for v in row] for row in qr.matrix_iter(scale=1, border=border)], dtype=bool
    )
    n_modules = modules.shape[0]
    px_per_module = spec.code_px * (height / _REFERENCE_HEIGHT) / (n_modules - 2 * border)
    # Crisp modules at 8x, then shrunk with area averaging to the (fractional) module size.
    big = 8
    crisp = np.repeat(np.repeat(np.where(modules, 0, 255).astype(np.uint8), big, 0), big, 1)
    side = max(8, round(n_modules * px_per_module))
    sym = np.asarray(cv2.resize(crisp, (side, side), interpolation=cv2.INTER_AREA))

    # The code, mapped to dark..light, turned and moved into place over the background.
    code = spec.dark + (sym.astype(np.float32) / 255.0) * (spec.light - spec.dark)
    mask = np.ones_like(code)
    m = cv2.getRotationMatrix2D((side / 2.0, side / 2.0), spec.angle_deg, 1.0)
    m[0, 2] += spec.center_x * width - side / 2.0
    m[1, 2] += spec.center_y * height - side / 2.0
    warped = cv2.warpAffine(code, m, (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0)
    wmask = cv2.warpAffine(mask, m, (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0)
    out: NDArray[np.float32] = (bg * (1.0 - wmask) + warped * wmask).astype(np.float32)
    return out


def _seed_int(kind: str, seed: int) -> int:
    # hash() of a str is salted per process; derive a stable integer instead.
    value = seed * 1_000_003
    for ch in kind:
        value = (value * 31 + ord(ch)) % (2**32)
    return value
