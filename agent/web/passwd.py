"""The status page's password file: an scrypt hash (``stationctl web passwd FILE``).

The file holds one line ``scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>``; the password itself is
never written anywhere. Standard library only (``hashlib.scrypt``), so ``stationctl`` needs no
web dependencies to make one.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import hmac
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from agent.errors import AgentError, ConfigError

if TYPE_CHECKING:
    import argparse

# scrypt cost: n=2**14, r=8, p=1 uses 16 MiB and ~50 ms on a Raspberry Pi 4 class CPU
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
FILE_MODE = 0o640


class PasswordError(AgentError):
    """A new password that cannot be used or written (``stationctl`` exit status 1)."""


@dataclass(frozen=True, kw_only=True)
class PasswordHash:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def line(self) -> str:
        return f"scrypt${self.n}${self.r}${self.p}${self.salt.hex()}${self.key.hex()}"

    def verify(self, password: str) -> bool:
        key = _derive(password, self.salt, n=self.n, r=self.r, p=self.p, length=len(self.key))
        return hmac.compare_digest(key, self.key)


def _derive(password: str, salt: bytes, *, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=64 * 1024 * 1024
    )


def hash_password(password: str) -> PasswordHash:
    check_password(password)
    salt = secrets.token_bytes(SALT_BYTES)
    key = _derive(password, salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, length=KEY_BYTES)
    return PasswordHash(n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, salt=salt, key=key)


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise PasswordError(f"the password needs at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise PasswordError(f"the password may have at most {MAX_PASSWORD_CHARS} characters")


def parse_hash(text: str, where: str) -> PasswordHash:
    parts = text.strip().split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError("not an scrypt line")
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
        if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or len(key) < 16:
            raise ValueError("parameters out of range")
    except ValueError as err:
        raise ConfigError(
            f"{where}: not a password file made by `stationctl web passwd` ({err})"
        ) from err
    return PasswordHash(n=n, r=r, p=p, salt=salt, key=key)


def read_hash(path: Path) -> PasswordHash:
    try:
        text = path.read_text(encoding="ascii")[:4096]
    except FileNotFoundError as err:
        raise ConfigError(
            f"web.password_file ({path}): no such file; make it with `stationctl web passwd {path}`"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"web.password_file ({path}): cannot read it: {err}") from err
    return parse_hash(text, f"web.password_file ({path})")


def read_new_password(stdin: TextIO) -> str:
    """Twice (compared) on a terminal, once (the first line) from a pipe."""
    if stdin.isatty():
        first = getpass.getpass("New status page password: ")
        second = getpass.getpass("Again: ")
        if first != second:
            raise PasswordError("the two passwords differ; nothing written")
        return first
    line = stdin.readline(MAX_PASSWORD_CHARS + 2)
    return line.rstrip("\r\n")


def write_hash(path: Path, pw: PasswordHash) -> None:
    """Atomically: a temporary file with mode 0640 in the same directory, then rename. Run as
    root, the file's group is its directory's (``/etc/station-agent``: the web user's group)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(pw.line() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # whatever the umask
        if os.geteuid() == 0:
            os.chown(tmp, 0, path.parent.stat().st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def cmd_web_passwd(args: argparse.Namespace) -> int:
    """``stationctl web passwd FILE``."""
    path: Path = args.file
    password = read_new_password(sys.stdin)
    pw = hash_password(password)
    try:
        write_hash(path, pw)
    except OSError as err:
        raise PasswordError(f"cannot write {path}: {err}") from err
    print(f"stationctl: wrote the status page's password hash to {path} (mode 0640)")
    return 0


def add_web_commands(sub: Any) -> None:
    """``stationctl web passwd FILE`` (``sub``: stationctl's sub-parsers action)."""
    web = sub.add_parser("web", help="the status page (station-agent web)")
    websub = web.add_subparsers(dest="web_command", required=True)
    pw = websub.add_parser(
        "passwd",
        help="set the status page password: read from stdin, its scrypt hash written to FILE",
    )
    pw.add_argument("file", type=Path, metavar="FILE")
    pw.set_defaults(handler=cmd_web_passwd)
