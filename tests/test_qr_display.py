"""Showing Intercharge QR codes: payload, matrix, screen rendering and the display drivers."""

from __future__ import annotations

import io
import os
import random
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import segno

from agent.errors import DriverError
from drivers.display.base import Display, EvseScreen
from drivers.display.framebuffer import (
    FbGeometry,
    FramebufferDisplay,
    pack_frame,
    read_geometry,
)
from drivers.display.png import PngDisplay
from drivers.display.qrcode import (
    DEFAULT_URL_TEMPLATE,
    QUIET_ZONE,
    intercharge_payload,
    matrix_to_halfblocks,
    qr_matrix,
    render_for_cli,
)
from drivers.display.render import render_screen, to_ascii
from drivers.display.sim import SimDisplay
from drivers.display.terminal import TerminalDisplay
from drivers.health import Health
from drivers.qr.decode import decode_file, decode_image
from drivers.qr.payload import classify
from drivers.qr.synth import random_evse_id

FIXED_IDS = ["+49*810*000*438", "DE*AB7*E840*6487", "DEAB7E8406487", "CH*ION*E213604", "1*234*5"]


def evse_ids(n: int = 30, seed: int = 11) -> list[str]:
    rnd = random.Random(seed)
    ids = FIXED_IDS + [random_evse_id(rnd) for _ in range(n - len(FIXED_IDS))]
    assert any("+" in i for i in ids) and any("*" not in i for i in ids)
    return ids


def screen(evse_id: str, state: str = "Available", message: str = "Tap your card") -> EvseScreen:
    return EvseScreen(evse_id=evse_id, state=state, message=message)


# --------------------------------------------------------------------------- payload


@pytest.mark.parametrize("evse_id", evse_ids())
def test_payload_round_trip_via_evseid_parameter(evse_id: str) -> None:
    payload = intercharge_payload(evse_id)
    assert payload.startswith("http://m.intercharge.eu/qr?evseid=")
    assert parse_qs(urlsplit(payload).query) == {"evseid": [evse_id]}
    assert classify(payload).evse_id == evse_id


def test_payload_encoding_choices() -> None:
    assert intercharge_payload("DE*AB7*E840*6487").endswith("evseid=DE*AB7*E840*6487")
    assert intercharge_payload("+49*810*000*438").endswith("evseid=%2B49*810*000*438")
    custom = intercharge_payload("DE*AB7*E1", "https://m.intercharge.eu/evse/show?evseid={evse_id}")
    assert custom == "https://m.intercharge.eu/evse/show?evseid=DE*AB7*E1"
    braces = intercharge_payload("DE*AB7*E1", "https://x.example/{x}?evseid={evse_id}")
    assert braces == "https://x.example/{x}?evseid=DE*AB7*E1"


@pytest.mark.parametrize("bad", ["", "DE*AB7", "DE AB7 E1", "DE*AB7*E1\n", "x" * 50])
def test_payload_rejects_invalid_evse_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="EvseID"):
        intercharge_payload(bad)


def test_payload_rejects_template_without_placeholder() -> None:
    with pytest.raises(ValueError, match="placeholder"):
        intercharge_payload("DE*AB7*E1", "http://m.intercharge.eu/qr?evseid=")


# --------------------------------------------------------------------------- matrix


def test_qr_matrix_shape_and_quiet_zone() -> None:
    m = qr_matrix(intercharge_payload("DE*AB7*E840*6487"))
    n = len(m)
    assert all(len(row) == n for row in m)
    assert (n - 2 * QUIET_ZONE - 17) % 4 == 0  # 17 + 4 * version modules
    for i in range(QUIET_ZONE):
        assert not any(m[i]) and not any(m[-1 - i])
        assert not any(row[i] for row in m) and not any(row[-1 - i] for row in m)
    # finder pattern corner
    assert m[QUIET_ZONE][QUIET_ZONE] and m[QUIET_ZONE + 6][QUIET_ZONE + 6]
    assert len(qr_matrix("x", border=0)) == 21
    with pytest.raises(ValueError):
        qr_matrix("x", error="l")  # type: ignore[arg-type]


def test_qr_matrix_error_level_m_or_better() -> None:
    payload = intercharge_payload("DE*AB7*E840*6487")
    ours = qr_matrix(payload)
    for level in ("m", "q", "h"):
        code = segno.make(payload, error=level, micro=False, boost_error=True)
        if len(ours) == code.symbol_size(border=QUIET_ZONE)[0]:
            assert code.error in ("M", "Q", "H")
            break
    else:  # pragma: no cover
        pytest.fail("matrix size matches no level >= M")


def test_matrix_is_fresh_list_each_time() -> None:
    a = qr_matrix("abc")
    a[0][0] = True
    assert qr_matrix("abc")[0][0] is False


# --------------------------------------------------------------------------- PNG display


def _png_payloads(path: Path) -> set[str]:
    return set(decode_file(path))


def test_png_display_round_trip_many_ids(tmp_path: Path) -> None:
    """Every code the PNG display draws decodes back to the same payload (30 ids)."""
    ids = evse_ids()
    groups = [ids[i : i + 3] for i in range(0, len(ids), 3)] + [[ids[0]], ids[3:7]]
    for n, group in enumerate(groups):
        path = tmp_path / f"screen{n}.png"
        display = PngDisplay(path)
        for evse_id in group:
            display.show(screen(evse_id))
        display.show_message("Authorising…")
        assert display.health().ok
        expected = {intercharge_payload(e) for e in group}
        assert _png_payloads(path) == expected, group
        for payload in expected:
            assert classify(payload).evse_id in group


def test_png_display_uses_qr_payload_and_custom_template(tmp_path: Path) -> None:
    path = tmp_path / "s.png"
    template = "https://m.intercharge.eu/evse/show?evseid={evse_id}"
    display = PngDisplay(path, width=640, height=400, url_template=template)
    display.show(screen("DE*AB7*E1"))
    display.show(EvseScreen("DE*AB7*E2", "Charging", "Charging 3.2 kWh", qr_payload="custom-42"))
    assert _png_payloads(path) == {
        "https://m.intercharge.eu/evse/show?evseid=DE*AB7*E1",
        "custom-42",
    }
    no_codes = PngDisplay(tmp_path / "n.png", url_template=None)
    no_codes.show(screen("DE*AB7*E1"))
    assert _png_payloads(tmp_path / "n.png") == set()


def test_png_display_writes_only_on_change_and_atomically(tmp_path: Path) -> None:
    path = tmp_path / "s.png"
    display = PngDisplay(path, width=320, height=240)
    assert not path.exists()  # constructor does no I/O
    display.show(screen("DE*AB7*E1"))
    display.show(screen("DE*AB7*E1"))
    display.show_message("")
    assert display.frames_written == 1
    display.show(screen("DE*AB7*E1", "Charging", "Charging 3.2 kWh"))
    display.show_message("Card rejected")
    display.show_message("Card rejected")
    assert display.frames_written == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.png"]  # no temp files left
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_png_display_write_failure_goes_to_health(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "s.png"
    display = PngDisplay(path)
    display.show(screen("DE*AB7*E1"))  # must not raise
    health = display.health()
    assert not health.ok and health.fault == "png_write_failed"
    assert health.detail and "missing-dir" in health.detail
    path.parent.mkdir()
    display.show(screen("DE*AB7*E1", message="Tap your card again"))
    assert display.health().ok and path.exists()


def test_png_display_after_shutdown_ignores_updates(tmp_path: Path) -> None:
    display = PngDisplay(tmp_path / "s.png")
    display.show(screen("DE*AB7*E1"))
    display.shutdown()
    display.show(screen("DE*AB7*E1", message="later"))
    assert display.frames_written == 1


# --------------------------------------------------------------------------- render


def test_render_screen_shapes() -> None:
    gray = render_screen([screen("DE*AB7*E1")], "hello", width=800, height=480)
    assert gray.shape == (480, 800) and gray.dtype == np.uint8
    rgb = render_screen([screen("DE*AB7*E1")], None, width=320, height=240, color=True)
    assert rgb.shape == (240, 320, 3)
    empty = render_screen([], None, width=100, height=100)
    assert empty.shape == (100, 100)
    with pytest.raises(ValueError):
        render_screen([], width=10, height=10)


def test_render_many_evses_all_decodable() -> None:
    ids = evse_ids(6, seed=3)
    img = render_screen([screen(e) for e in ids], "Tap your card", width=800, height=480)
    assert set(decode_image(img)) == {intercharge_payload(e) for e in ids}


def test_render_tiny_screen_does_not_crash() -> None:
    img = render_screen([screen(e) for e in evse_ids(8)], "x" * 500, width=64, height=48)
    assert img.shape == (48, 64)


def test_render_long_and_unicode_text() -> None:
    long_msg = "Charging 3.2 kWh – Ladevorgang läuft… " * 5
    img = render_screen(
        [screen("DE*AB7*E1", "Charging", long_msg)], long_msg, width=400, height=300
    )
    assert decode_image(img) == [intercharge_payload("DE*AB7*E1")]
    assert to_ascii("Authorising…") == "Authorising..."
    assert to_ascii("läuft – 5 €") == "lauft - 5 EUR"
    assert to_ascii("日本") == "??"


# --------------------------------------------------------------------------- terminal


def _halfblocks_to_matrix(lines: list[str], dark_background: bool) -> list[list[bool]]:
    top = {"█": True, "▀": True, "▄": False, " ": False}
    bottom = {"█": True, "▄": True, "▀": False, " ": False}
    rows: list[list[bool]] = []
    for line in lines:
        rows.append([top[c] != dark_background for c in line])
        rows.append([bottom[c] != dark_background for c in line])
    return rows


@pytest.mark.parametrize("dark_background", [True, False])
def test_halfblocks_encode_the_matrix_exactly(dark_background: bool) -> None:
    matrix = qr_matrix(intercharge_payload("+49*810*000*438"))
    lines = matrix_to_halfblocks(matrix, dark_background=dark_background)
    assert len(lines) == (len(matrix) + 1) // 2
    back = _halfblocks_to_matrix(lines, dark_background)
    assert back[: len(matrix)] == matrix
    if len(back) > len(matrix):  # odd row count: the padding row is light (quiet zone)
        assert not any(back[-1])


def test_terminal_display_output() -> None:
    out = io.StringIO()
    display = TerminalDisplay(stream=out)
    display.show(screen("DE*AB7*E840*6487", "Available", "Tap your card"))
    display.show(screen("+49*810*000*438", "Charging", "Charging 3.2 kWh"))
    display.show_message("Authorising...")
    text = out.getvalue()
    assert "DE*AB7*E840*6487" in text and "+49*810*000*438" in text
    assert "Tap your card" in text and "Charging 3.2 kWh" in text and "Authorising..." in text
    assert "▀" in text and "▄" in text and "█" in text
    assert "\x1b[2J" not in text  # not a TTY: no clearing
    frames = text.count("-" * 40)
    display.show(screen("+49*810*000*438", "Charging", "Charging 3.2 kWh"))  # no change
    assert out.getvalue().count("-" * 40) == frames == 3
    assert display.health().ok


def test_terminal_display_clear_and_failures() -> None:
    out = io.StringIO()
    display = TerminalDisplay(stream=out, clear_screen=True, url_template=None)
    display.show(screen("DE*AB7*E1"))
    assert out.getvalue().startswith("\x1b[H\x1b[2J")
    assert "█" not in out.getvalue()  # no code without a template or qr_payload
    out.close()
    display.show(screen("DE*AB7*E1", message="again"))  # closed stream: no exception
    assert display.health().fault == "terminal_write_failed"


def test_render_for_cli(tmp_path: Path) -> None:
    png = tmp_path / "sticker.png"
    text = render_for_cli("+49*810*000*438", DEFAULT_URL_TEMPLATE, str(png), True)
    assert "█" in text and "+49*810*000*438" in text and "evseid=%2B49*810*000*438" in text
    assert decode_file(png) == [intercharge_payload("+49*810*000*438")]
    only_text = render_for_cli("DE*AB7*E1", terminal=False)
    assert (
        "█" not in only_text and "Payload: http://m.intercharge.eu/qr?evseid=DE*AB7*E1" in only_text
    )
    with pytest.raises(ValueError):
        render_for_cli("nope")


# --------------------------------------------------------------------------- framebuffer


def _unpack(data: bytes, geo: FbGeometry) -> np.ndarray:
    """Framebuffer bytes back to an RGB image (the inverse of pack_frame, up to 565 rounding)."""
    raw = np.frombuffer(data, dtype=np.uint8).reshape(geo.height, geo.stride)
    line = raw[:, : geo.width * geo.bits_per_pixel // 8]
    if geo.bits_per_pixel == 16:
        v = line.copy().view("<u2").astype(np.uint32)
        r = ((v >> 11) & 0x1F) * 255 // 31
        g = ((v >> 5) & 0x3F) * 255 // 63
        b = (v & 0x1F) * 255 // 31
        return np.stack([r, g, b], axis=2).astype(np.uint8)
    px = line.reshape(geo.height, geo.width, geo.bits_per_pixel // 8)
    return np.ascontiguousarray(px[:, :, 2::-1][:, :, :3])


@pytest.mark.parametrize(
    ("bpp", "width", "height", "stride"),
    [(16, 480, 320, None), (32, 800, 480, None), (16, 320, 240, 1024), (24, 320, 240, None)],
)
def test_framebuffer_against_a_plain_file(
    tmp_path: Path, bpp: int, width: int, height: int, stride: int | None
) -> None:
    dev = tmp_path / "fb0"
    dev.write_bytes(b"")
    display = FramebufferDisplay(
        str(dev), width=width, height=height, bits_per_pixel=bpp, stride=stride
    )
    display.show(screen("DE*AB7*E840*6487", "Available", "Tap your card"))
    assert display.health().ok, display.health()
    geo = display.geometry
    assert geo is not None and geo.stride == (stride or width * bpp // 8)
    data = dev.read_bytes()
    assert len(data) == geo.stride * height
    img = _unpack(data, geo)
    assert img.shape == (height, width, 3)
    assert tuple(img[height // 2, 2]) == (255, 255, 255)  # white background
    assert decode_image(img[:, :, ::-1].copy()) == [intercharge_payload("DE*AB7*E840*6487")]
    if stride and stride > width * bpp // 8:
        pad = np.frombuffer(data, np.uint8).reshape(height, stride)[:, width * bpp // 8 :]
        assert not pad.any()
    # a second, different frame overwrites in place (no growth)
    display.show_message("Card rejected")
    assert len(dev.read_bytes()) == geo.stride * height
    assert display.frames_written == 2


def test_pack_frame_pixel_formats() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    g16 = FbGeometry(4, 1, 16, 8)
    assert pack_frame(rgb, g16) == bytes([0x00, 0xF8, 0xE0, 0x07, 0x1F, 0x00, 0xFF, 0xFF])
    assert pack_frame(rgb, g16, swap_rb=True)[:2] == bytes([0x1F, 0x00])  # BGR565: red low bits
    g32 = FbGeometry(4, 1, 32, 16)
    assert pack_frame(rgb, g32)[:8] == bytes([0, 0, 255, 255, 0, 255, 0, 255])  # B,G,R,X
    g24 = FbGeometry(4, 1, 24, 12)
    assert pack_frame(rgb, g24)[:3] == bytes([0, 0, 255])
    with pytest.raises(ValueError):
        pack_frame(rgb, FbGeometry(5, 1, 16, 10))
    with pytest.raises(ValueError):
        FbGeometry(4, 1, 8, 4)
    with pytest.raises(ValueError):
        FbGeometry(4, 1, 16, 4)


def test_framebuffer_geometry_from_sysfs(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys" / "fb1"
    sysfs.mkdir(parents=True)
    (sysfs / "virtual_size").write_text("480,640\n")  # taller virtual area for panning
    (sysfs / "modes").write_text("U:480x320p-0\n")
    (sysfs / "bits_per_pixel").write_text("16\n")
    (sysfs / "stride").write_text("960\n")
    geo = read_geometry("/dev/fb1", sysfs_dir=sysfs)
    assert geo == FbGeometry(480, 320, 16, 960)
    (sysfs / "modes").unlink()
    assert read_geometry("/dev/fb1", sysfs_dir=sysfs).height == 640
    with pytest.raises(DriverError, match="stride"):  # 32 bpp does not fit sysfs' stride
        read_geometry("/dev/fb1", sysfs_dir=sysfs, bits_per_pixel=32)

    dev = tmp_path / "fb1"
    dev.write_bytes(b"")
    display = FramebufferDisplay(str(dev), sysfs_dir=sysfs, height=320)
    display.show(screen("DE*AB7*E1"))
    assert display.health().ok
    assert len(dev.read_bytes()) == 960 * 320


def test_framebuffer_faults_do_not_raise(tmp_path: Path) -> None:
    nosys = FramebufferDisplay(str(tmp_path / "fb7"), sysfs_dir=tmp_path / "nothing")
    nosys.show(screen("DE*AB7*E1"))
    assert nosys.health().fault == "framebuffer_geometry"
    nodev = FramebufferDisplay(str(tmp_path / "fb9"), width=64, height=48, bits_per_pixel=16)
    nodev.show(screen("DE*AB7*E1"))
    assert nodev.health().fault == "framebuffer_write_failed"
    assert not (tmp_path / "fb9").exists()  # never created


# --------------------------------------------------------------------------- sim + protocol


def test_sim_display_records_bounded_history() -> None:
    sim = SimDisplay(history_size=5)
    for i in range(10):
        sim.show(screen("DE*AB7*E1", message=f"m{i}"))
    sim.show_message("Card rejected")
    sim.show(screen("DE*AB7*E2"))
    assert sim.screen("DE*AB7*E1") == screen("DE*AB7*E1", message="m9")
    assert sim.message == "Card rejected" and list(sim.messages) == ["Card rejected"]
    assert len(sim.history) == 5
    assert [s.message for s in sim.screens_of("DE*AB7*E1")] == ["m7", "m8", "m9"]
    assert set(sim.screens) == {"DE*AB7*E1", "DE*AB7*E2"}
    sim.set_health(Health(ok=False, fault="x"))
    assert sim.health().fault == "x"
    sim.shutdown()
    assert sim.is_shut_down


def test_drivers_satisfy_the_display_protocol(tmp_path: Path) -> None:
    displays: list[Display] = [
        SimDisplay(),
        PngDisplay(tmp_path / "a.png"),
        TerminalDisplay(stream=io.StringIO()),
        FramebufferDisplay(os.devnull, width=64, height=48, bits_per_pixel=16),
    ]
    for d in displays:
        d.show(screen("DE*AB7*E1"))
        d.show_message("hi")
        assert isinstance(d.health(), Health)
        d.shutdown()
