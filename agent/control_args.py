"""Arguments of control-socket requests: one strict pydantic model per command.

A request is ``{"cmd": name, **arguments}``; every key but ``cmd`` is an argument of the
command's model. The models are strict (no coercion: ``"5"`` is not a number, ``true`` is not
an integer) and forbid unknown keys, so a wrong request is refused with a clear error that
names the command, the argument and what was wrong, before any handler runs. ``null`` is
accepted only where a handler treats it as "not given" (``evse_id``: the station's only EVSE).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from agent.errors import AgentError
from agent.messages import describe_validation_error
from drivers.rfid.base import CardType

if TYPE_CHECKING:
    from agent.controller import Controller

MAX_ERROR_CHARS = 500  # an unknown key may be 60 kB long: the reply names it, shortened

A = TypeVar("A", bound="Args")


class ArgumentError(AgentError):
    """A control request's arguments do not fit its command."""


class Args(BaseModel):
    """The arguments of one command (the base: no arguments at all)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def parse_args(command: str, model: type[A], request: Mapping[str, Any]) -> A:
    """The arguments of ``request`` (every key but ``cmd``) as ``model``, or ArgumentError."""
    fields = {k: v for k, v in request.items() if k != "cmd"}
    try:
        return model.model_validate(fields)
    except ValidationError as err:
        message = f"{command}: {describe_validation_error(err)}"
        if len(message) > MAX_ERROR_CHARS:
            message = message[: MAX_ERROR_CHARS - 1] + "…"
        raise ArgumentError(message) from err


def _clamp(lo: float, hi: float) -> Callable[[float], float]:
    def clamp(value: float) -> float:
        return min(max(value, lo), hi)

    return clamp


# a finite number of seconds (an int is accepted, a bool or a string is not), clamped into range
FiniteSeconds = Annotated[float, Field(allow_inf_nan=False)]
NonEmpty = Annotated[str, Field(min_length=1)]


class NoArgs(Args):
    pass


class EvseArgs(Args):
    evse_id: str | None = None  # None: the station's only EVSE


class SessionArgs(Args):
    session_id: Annotated[str, Field(min_length=1, max_length=64)]


class SessionsArgs(Args):
    limit: Annotated[int, Field(ge=1, le=10_000)] = 50


class AuthListArgs(Args):
    limit: Annotated[int, Field(ge=1, le=100_000)] = 100


class SimTapArgs(Args):
    uid: NonEmpty
    # the one lax field: JSON carries the enum's value ("mifare_classic"), never the enum
    card_type: Annotated[CardType, Field(strict=False)] = CardType.UNKNOWN


class SimPlugArgs(EvseArgs):
    car_max_a: Annotated[float, Field(ge=0, le=80, allow_inf_nan=False)] | None = None


class PilotSetArgs(EvseArgs):
    amps: Annotated[float, Field(ge=0, le=80, allow_inf_nan=False)]


class SimRelayArgs(EvseArgs):
    mode: Literal["normal", "welded", "stuck_open"] = "normal"


class SimQrArgs(Args):
    payload: NonEmpty


class RfidReadArgs(Args):
    timeout: Annotated[FiniteSeconds, AfterValidator(_clamp(0.1, 120.0))] = 10.0


class QrVerifyArgs(EvseArgs):
    timeout: Annotated[FiniteSeconds, AfterValidator(_clamp(0.1, 300.0))] = 30.0


def resolve_evse(ctl: Controller, evse_id: str | None) -> str:
    """The EVSE a request names, or the only one the station has."""
    if evse_id is None:
        if len(ctl.evses) != 1:
            raise ValueError(
                f"this station has {len(ctl.evses)} EVSEs: name one of {', '.join(ctl.evses)}"
            )
        return next(iter(ctl.evses))
    if evse_id not in ctl.evses:
        raise ValueError(f"unknown EVSE {evse_id!r} (known: {', '.join(ctl.evses)})")
    return evse_id
