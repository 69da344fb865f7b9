"""Modbus register maps of the supported energy meters, as data.

Addresses are the 0-based protocol addresses sent on the wire (the "3xxxx"/"4xxxx" numbers of
the manuals minus 30001/40001). Every quantity is read with one request of ``count`` registers.

Sources and assumptions (the manufacturers' published Modbus protocol documents, cross-checked
against public register lists; verify against the manual of the exact firmware before trusting a
new model):

* Eastron SDM630 (v2): input registers (function 0x04), IEEE-754 float32, high word first.
  30001 (0x0000) phase 1 line-to-neutral voltage [V]; 30053 (0x0034) total system power [W];
  30073 (0x0048) total import active energy [kWh]. Note: 30343 (0x0156) is "total kWh", the
  *sum of import and export*; it equals import only where nothing is ever exported, so the
  map uses 0x0048 (import) for billing.
* Eastron SDM72D-M-2 ("sdm72"): the same layout as the SDM630 for these three quantities
  (0x0000 voltage L1, 0x0034 total power, 0x0048 total import, 0x0156 import + export).
  The first-generation SDM72D-M has no voltage registers: use model ``"sdm72v1"``.
* ABB B23 (B21/B23/B24 family): holding registers (function 0x03), unsigned/signed integers
  with fixed scaling, high word first: 0x5000 active import energy total, uint64 in 0.01 kWh
  (4 registers); 0x5B14 total active power, int32 in 0.01 W; 0x5B00 voltage L1-N, uint32 in
  0.1 V. Assumption: the meter reports "not available" as all-ones (unsigned) or the maximum
  positive value (signed); such words decode to NaN and the reading is rejected as implausible.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Literal

DataType = Literal["float32", "uint16", "int16", "uint32", "int32", "uint64"]
FunctionKind = Literal["input", "holding"]
WordOrder = Literal["big", "little"]

_WORDS: dict[str, int] = {
    "float32": 2,
    "uint16": 1,
    "int16": 1,
    "uint32": 2,
    "int32": 2,
    "uint64": 4,
}
_STRUCT: dict[str, str] = {
    "float32": ">f",
    "uint16": ">H",
    "int16": ">h",
    "uint32": ">I",
    "int32": ">i",
    "uint64": ">Q",
}
# Values integer meters use for "not available" (assumption, see the module doc).
_NOT_AVAILABLE: dict[str, int] = {
    "uint16": 0xFFFF,
    "int16": 0x7FFF,
    "uint32": 0xFFFF_FFFF,
    "int32": 0x7FFF_FFFF,
    "uint64": 0xFFFF_FFFF_FFFF_FFFF,
}


@dataclass(frozen=True)
class Register:
    address: int  # 0-based wire address
    dtype: DataType
    scale: float = 1.0  # engineering value = raw * scale
    unit: str = ""

    @property
    def count(self) -> int:
        return _WORDS[self.dtype]


@dataclass(frozen=True)
class RegisterMap:
    model: str
    description: str
    function: FunctionKind  # which register table every quantity is read from
    word_order: WordOrder  # default order of 16-bit words in multi-word values
    energy_kwh: Register  # total imported active energy
    power_w: Register | None  # total active power
    voltage_v: Register | None  # voltage L1-N
    notes: str = ""


_SDM_ENERGY = Register(0x0048, "float32", unit="kWh")
_SDM_POWER = Register(0x0034, "float32", unit="W")
_SDM_VOLTAGE = Register(0x0000, "float32", unit="V")

MODELS: dict[str, RegisterMap] = {
    "sdm630": RegisterMap(
        model="sdm630",
        description="Eastron SDM630 (three-phase)",
        function="input",
        word_order="big",
        energy_kwh=_SDM_ENERGY,
        power_w=_SDM_POWER,
        voltage_v=_SDM_VOLTAGE,
        notes="0x0156 is import+export; 0x0048 is import only",
    ),
    "sdm72": RegisterMap(
        model="sdm72",
        description="Eastron SDM72D-M-2 (three-phase, v2)",
        function="input",
        word_order="big",
        energy_kwh=_SDM_ENERGY,
        power_w=_SDM_POWER,
        voltage_v=_SDM_VOLTAGE,
        notes="same addresses as the SDM630 for these quantities",
    ),
    "sdm72v1": RegisterMap(
        model="sdm72v1",
        description="Eastron SDM72D-M (first generation, no voltage registers)",
        function="input",
        word_order="big",
        energy_kwh=_SDM_ENERGY,
        power_w=_SDM_POWER,
        voltage_v=None,
    ),
    "abb_b23": RegisterMap(
        model="abb_b23",
        description="ABB B23 (B21/B23/B24 family)",
        function="holding",
        word_order="big",
        energy_kwh=Register(0x5000, "uint64", scale=0.01, unit="kWh"),
        power_w=Register(0x5B14, "int32", scale=0.01, unit="W"),
        voltage_v=Register(0x5B00, "uint32", scale=0.1, unit="V"),
        notes="integers with fixed scaling; all-ones / max-positive means not available",
    ),
}

_ALIASES = {"b23": "abb_b23", "abbb23": "abb_b23", "sdm72d": "sdm72", "sdm72dm": "sdm72"}


def register_map(model: str) -> RegisterMap:
    """The map of ``model`` (case-insensitive; ``-`` and ``_`` are interchangeable)."""
    key = model.strip().lower().replace("-", "_")
    key = _ALIASES.get(key.replace("_", ""), key)
    if key not in MODELS:
        raise KeyError(f"unknown meter model {model!r} (known: {', '.join(sorted(MODELS))})")
    return MODELS[key]


def decode(words: list[int], reg: Register, word_order: WordOrder) -> float:
    """Turn the 16-bit words read for ``reg`` into its engineering value.

    Integer "not available" markers decode to NaN (see the module doc).
    """
    if len(words) != reg.count:
        raise ValueError(f"expected {reg.count} registers for {reg.dtype}, got {len(words)}")
    ordered = list(reversed(words)) if word_order == "little" else list(words)
    raw = b"".join(struct.pack(">H", w & 0xFFFF) for w in ordered)
    value = struct.unpack(_STRUCT[reg.dtype], raw)[0]
    if reg.dtype != "float32" and value == _NOT_AVAILABLE[reg.dtype]:
        return math.nan
    return float(value) * reg.scale


def encode(value: float, reg: Register, word_order: WordOrder) -> list[int]:
    """The inverse of :func:`decode` (for simulators and tests)."""
    raw_value: float | int = value / reg.scale
    if reg.dtype != "float32":
        raw_value = round(raw_value)
    raw = struct.pack(_STRUCT[reg.dtype], raw_value)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return list(reversed(words)) if word_order == "little" else words
