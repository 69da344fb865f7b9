"""The README's examples are real: every payload a mosquitto_pub example sends is accepted by
the station's own parsers, and every topic it names is one of the contract's."""

from __future__ import annotations

import json
import re
from pathlib import Path

from agent.asyncapi import TOPICS
from agent.messages import parse_auth_response, parse_cdr_ack, parse_command

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
PARSERS = {"auth/res": parse_auth_response, "cdr/ack": parse_cdr_ack, "cmd/req": parse_command}


def test_every_mosquitto_pub_payload_parses() -> None:
    section = README[README.index("### From a shell") : README.index("**The floating tap.**")]
    pubs = re.findall(r"-t 'stations/ST-SIM-0001/([a-z/]+)' \\\n  -m '([^']+)'", section)
    assert {topic for topic, _ in pubs} == set(PARSERS)
    commands = set()
    for topic, payload in pubs:
        parsed = PARSERS[topic](json.loads(payload))
        commands.add(getattr(parsed, "command", None))
    assert {"remote_start", "remote_stop", "set_availability", "update_local_list"} <= commands


def test_every_topic_in_the_examples_is_in_the_contract() -> None:
    section = README[README.index("### From a shell") : README.index("### Mapping onto OICP")]
    named = set(re.findall(r"stations/ST-SIM-0001/([a-z/]+)", section)) - {""}
    assert named <= {t.suffix for t in TOPICS}
