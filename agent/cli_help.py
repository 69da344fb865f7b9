"""``--help`` that reads cleanly for both commands: epilogs kept as written, and no path or
name broken at a hyphen (``/run/station-agent/control.sock`` stays whole)."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's and epilog's lines as written; never breaks at a hyphen."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(
            " ".join(text.split()), width, break_on_hyphens=False, break_long_words=False
        )


class Parser(argparse.ArgumentParser):
    """Every (sub-)parser formats with :class:`Formatter` (sub-parsers are of the same class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)
