"""A simulated Iskra WM3M4C for the tests: a real pymodbus server (TCP, or RTU on a pty) whose
register hook acts like the meter's signing module. On ``B`` it notes the begin reading; on the
end command it builds the OCMF payload from the station's metadata, signs it with the test's
own secp256r1 key and puts payload and signature into their registers (hardware/meters/)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.meter import iskra
from drivers.meter.iskra import text_words
from drivers.meter.ocmf import ocmf_time

HOLD_START, HOLD_SIZE = 7000, 1300
INPUT_SIZE = 500


def _bytes_words(raw: bytes) -> list[int]:
    if len(raw) % 2:
        raw += b"\0"
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


class IskraServer:
    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        energy_wh: int = 1_234_500,
        make_server: Callable[[Any], Any] | None = None,
        device_id: int = 33,
    ) -> None:
        self.key = key
        self.energy_wh = energy_wh
        self.begin: tuple[int, datetime] | None = None
        self.pagination = 0
        self.records: list[str] = []
        self.hold = [0] * HOLD_SIZE
        nums = key.public_key().public_numbers()
        point = nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")
        self._put(iskra.REG_PUBLIC_KEY, _bytes_words(point))
        self.hold[iskra.REG_SIGNATURE_STATUS - HOLD_START] = 1
        inputs = [0] * INPUT_SIZE
        inputs[1:9] = (text_words("WM3M4C".ljust(16)))[:8]
        inputs[9:13] = text_words("79000042")[:4]
        inputs[107:109] = [0xFF00 | 0x00, 2305]  # T5: 2305 x 10^-1 V
        inputs[140:142] = [0x0000, 7360]  # T6: 7360 W
        self.inputs = inputs
        self._set_energy_words()
        device = SimDevice(
            id=device_id,
            simdata=(
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(HOLD_START, values=self.hold, datatype=DataType.REGISTERS)],
                [SimData(0, values=self.inputs, datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )
        factory = make_server or (lambda dev: ModbusTcpServer(dev, address=("127.0.0.1", 0)))
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.server: Any = None

        async def main() -> None:
            self.server = factory(device)
            await self.server.serve_forever(background=True)
            ready.set()
            await self.server.serving

        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(main(),), daemon=True
        )
        self.thread.start()
        assert ready.wait(5), "Modbus server did not start"

    @property
    def port(self) -> int:
        return int(self.server.transport.sockets[0].getsockname()[1])

    def _put(self, address: int, words: list[int], registers: list[int] | None = None) -> None:
        regs = self.hold if registers is None else registers
        regs[address - HOLD_START : address - HOLD_START + len(words)] = words

    def _set_energy_words(self) -> None:
        self.inputs[414] = 0  # exponent: Wh x 10^0
        self.inputs[418:420] = [(self.energy_wh >> 16) & 0xFFFF, self.energy_wh & 0xFFFF]

    def add_energy(self, wh: int) -> None:
        """The car draws energy (the input registers follow, read by the live server)."""
        self.energy_wh += wh

        async def update() -> None:
            self._set_energy_words()
            await self.server.context.async_setValues(
                33, 4, 418, [(self.energy_wh >> 16) & 0xFFFF, self.energy_wh & 0xFFFF]
            )

        asyncio.run_coroutine_threadsafe(update(), self.loop).result(5)

    def _text(self, registers: list[int], address: int, length: int) -> str:
        off = address - HOLD_START
        raw = b"".join(w.to_bytes(2, "big") for w in registers[off : off + (length + 1) // 2])
        return raw[:length].decode("ascii")

    async def _action(  # noqa: PLR0917  (pymodbus calls it positionally)
        self,
        fc: int,
        start: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | None,
    ) -> None:
        if fc not in (6, 16) or start != HOLD_START or address != iskra.REG_COMMAND or not values:
            return
        now = datetime.now(UTC)
        if values[0] == iskra.CMD_BEGIN:
            self.begin = (self.energy_wh, now)
            registers[0] = 1  # active
            registers[iskra.REG_SIGNATURE_STATUS - HOLD_START] = iskra.STATUS_OK
        elif values[0] == iskra.CMD_END and self.begin is not None:
            self._sign_end(registers, now)

    def _sign_end(self, registers: list[int], now: datetime) -> None:
        assert self.begin is not None
        meta_len = registers[iskra.REG_METADATA_LEN - HOLD_START]
        payload = json.loads(self._text(registers, iskra.REG_METADATA, meta_len))
        synced = registers[iskra.REG_TIME_STATUS - HOLD_START] == 2
        self.pagination += 1
        payload.update(PG=f"T{self.pagination}", MV="Iskra", MM="WM3M4C", MS="79000042", MF="1.3.2")
        begin_wh, begin_ts = self.begin
        payload["RD"] = [
            {"TM": ocmf_time(begin_ts, synced), "TX": "B", "RV": begin_wh, "RI": "01-00:01.08.00",
             "RU": "Wh", "RT": "AC", "ST": "G"},
            {"TM": ocmf_time(now, synced), "TX": "E", "RV": self.energy_wh, "ST": "G"},
        ]  # fmt: skip
        text = json.dumps(payload, separators=(",", ":"))
        signature = self.key.sign(text.encode(), ec.ECDSA(hashes.SHA256()))
        self._put(iskra.REG_SIGNED, _bytes_words(text.encode()), registers)
        registers[iskra.REG_SIGNED_LEN - HOLD_START] = len(text)
        self._put(iskra.REG_SIGNATURE, _bytes_words(signature), registers)
        registers[iskra.REG_SIGNATURE_LEN - HOLD_START] = len(signature)
        registers[0] = 0  # idle
        registers[iskra.REG_SIGNATURE_STATUS - HOLD_START] = iskra.STATUS_OK
        self.begin = None
        self.records.append(text)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(5)
        self.thread.join(5)
        self.loop.close()
