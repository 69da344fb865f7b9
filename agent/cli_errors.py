"""No traceback reaches a user: one error handler per exception type, for both commands.

``station-agent`` and ``stationctl`` run their sub-command through :meth:`ErrorHandlers.run`.
An exception that escapes it is looked up along its class's MRO, so the most specific handler
wins (``BrokenPipeError`` before ``OSError``, ``ConfigError`` before ``AgentError``); the
handler prints one line on stderr (what is wrong, and what to do) and returns the exit status:

====  ==============================================================================
0     done
1     the command failed or the answer was negative (no card, no code, a failed check);
      the daemon is not running or refused the request; a device or file could not be read
2     a bad command line (argparse's own status)
69    EX_UNAVAILABLE: the MQTT broker cannot be reached (``demo``, ``backend-sim``)
78    EX_CONFIG: the configuration is invalid (systemd does not restart the daemon on it)
130   interrupted by Ctrl-C (128 + SIGINT)
141   stdout was closed early (``stationctl sessions | head -3``; 128 + SIGPIPE), silently
====  ==============================================================================

``stationctl selftest`` exits with the number of failed checks. Only exceptions that have a
handler are caught: a bug still shows its traceback (it is a bug, and must be reported).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

from agent.errors import AgentError, BackendError, ConfigError

EX_FAILURE = 1
EX_USAGE = 2
EX_UNAVAILABLE = 69
EX_CONFIG = 78
EX_INTERRUPTED = 128 + signal.SIGINT  # 130
EX_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141

E = TypeVar("E", bound=BaseException)
Handler = Callable[[BaseException], int]


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line: continuation lines are joined with '; '."""
    text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def stdout_closed() -> int:
    """The reader of our stdout went away: stop without a word.

    Python flushes stdout once more at exit; pointing its descriptor at /dev/null keeps that
    flush from raising again (the recipe of the Python documentation, ``signal`` module).
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture stdout)
        return EX_BROKEN_PIPE
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return EX_BROKEN_PIPE


class ErrorHandlers:
    """The handlers of one command (``prog`` starts every line it prints)."""

    def __init__(self, prog: str) -> None:
        self.prog = prog
        self._handlers: dict[type[BaseException], Handler] = {}

    def register(self, exc_type: type[E]) -> Callable[[Callable[[E], int]], Callable[[E], int]]:
        """Decorator: ``fn(err) -> exit status`` handles ``exc_type`` and its subclasses."""

        def deco(fn: Callable[[E], int]) -> Callable[[E], int]:
            self._handlers[exc_type] = fn  # type: ignore[assignment]
            return fn

        return deco

    def fail(self, text: str, status: int, hint: str = "") -> int:
        """One line on stderr: ``prog: text; hint``; returns ``status``."""
        print(f"{self.prog}: {text}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return status

    def handle(self, err: BaseException) -> int:
        """The status of the most specific handler of ``err``; re-raises if there is none."""
        for cls in type(err).__mro__:
            if cls in self._handlers:
                return self._handlers[cls](err)
        raise err

    def run(self, fn: Callable[[], int]) -> int:
        """``fn()``, its output flushed (a closed pipe shows here, not at interpreter exit)."""
        try:
            status = fn()
            sys.stdout.flush()
        except tuple(self._handlers) as err:
            return self.handle(err)
        return status


def standard_handlers(prog: str) -> ErrorHandlers:
    """The handlers both commands share; a command adds (or replaces) its own."""
    eh = ErrorHandlers(prog)

    @eh.register(BrokenPipeError)
    def _broken_pipe(err: BrokenPipeError) -> int:
        return stdout_closed()

    @eh.register(KeyboardInterrupt)
    def _interrupted(err: KeyboardInterrupt) -> int:
        return eh.fail("interrupted", EX_INTERRUPTED)

    @eh.register(ConfigError)
    def _config(err: ConfigError) -> int:
        return eh.fail(one_line(err), EX_CONFIG)  # it names the file, the key and the problem

    @eh.register(BackendError)
    def _backend(err: BackendError) -> int:
        return eh.fail(
            one_line(err), EX_UNAVAILABLE, "is the broker running, and is --broker right?"
        )

    @eh.register(AgentError)
    def _agent(err: AgentError) -> int:
        return eh.fail(one_line(err), EX_FAILURE)

    @eh.register(OSError)
    def _os(err: OSError) -> int:
        where = f"{err.filename}: " if err.filename else ""
        return eh.fail(f"{where}{err.strerror or one_line(err)}", EX_FAILURE)

    return eh
