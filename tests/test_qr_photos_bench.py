"""The photo-folder benchmark reads zxing's blackbox layout: .txt (UTF-8), .bin (ISO-8859-1)."""

from __future__ import annotations

from pathlib import Path

import cv2

from drivers.qr.synth import make_frame
from tests.benchmarks.qr_decode import main
from tests.benchmarks.qr_photos import load_photos, photos_markdown, run_photos


def _photo(path: Path, payload: str | None, seed: int) -> None:
    ok, buf = cv2.imencode(path.suffix, make_frame(payload, "clean", seed))
    assert ok
    path.write_bytes(buf.tobytes())


def test_photo_sets_are_read_like_zxings_blackbox(tmp_path: Path) -> None:
    one, two = tmp_path / "set-1", tmp_path / "set-2"
    one.mkdir()
    two.mkdir()
    _photo(one / "1.png", "ladesäule\r\n1", 1)
    (one / "1.txt").write_bytes("ladesäule\r\n1".encode())  # compared exactly, CR/LF included
    (one / "1.metadata.txt").write_text("ERRORS_CORRECTED=0\n")
    _photo(one / "2.jpg", "other text", 2)
    (one / "2.txt").write_text("expected text")  # a misread
    _photo(two / "3.png", "Müller", 3)
    (two / "3.bin").write_bytes("Müller".encode("iso-8859-1"))
    _photo(two / "4.png", None, 4)  # no expected file: skipped
    photos, skipped = load_photos(tmp_path)
    assert [(p.set_name, p.name) for p in photos] == [
        ("set-1", "1.png"),
        ("set-1", "2.jpg"),
        ("set-2", "3.png"),
    ]
    assert skipped == [two / "4.png"]
    result = run_photos(photos, ("zxing",))
    tallies = result["tallies"]
    assert (tallies["all"].decoded, tallies["all"].total, tallies["all"].misread) == (8, 12, 4)
    assert (tallies["set:set-2"].decoded, tallies["rot:90"].decoded) == (4, 2)
    assert tallies["non-ascii"].decoded == 8 and tallies["ascii"].decoded == 0
    text = photos_markdown(result)
    assert "| set-1 | 4 / 8 = 50.0% | 4 |" in text and "| 270° | 2 / 3" in text


def test_photos_command_line(tmp_path: Path) -> None:
    _photo(tmp_path / "a.png", "abc", 1)
    (tmp_path / "a.txt").write_text("abc")
    assert main(["--photos", str(tmp_path), "--stages", "zxing"]) == 0
    assert main(["--photos", str(tmp_path / "empty")]) == 2
