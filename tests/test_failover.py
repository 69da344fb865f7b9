"""The reconnect policy (agent/failover.py): node order, no flapping, full-jitter delays; and the
``mqtt.urls`` configuration. Pure: random numbers are injected, nothing sleeps."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.config import ConfigError, MqttConfig, parse_config
from agent.failover import FailoverPolicy


def recording(value: str = "low") -> tuple[list[tuple[float, float]], object]:
    """A uniform(low, high) stand-in that records its windows and answers one end."""
    windows: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        windows.append((low, high))
        return low if value == "low" else high

    return windows, uniform


def test_starts_on_the_preferred_node_and_fails_over_to_the_next() -> None:
    p = FailoverPolicy(3, min_s=1, max_s=30, uniform=lambda a, b: a)
    assert p.node == 0
    p.connected()
    attempt = p.lost()
    assert attempt.node == 1
    p.connected()
    assert p.failovers == 1


def test_no_flapping_back_to_the_preferred_node_while_the_new_one_works() -> None:
    p = FailoverPolicy(3, min_s=1, max_s=30, uniform=lambda a, b: a)
    p.connected()
    p.lost()
    p.connected()  # on node 1 now; node 0 may be back, the station stays
    assert p.node == 1
    # a later failure of node 1: back to the preferred node first, node 1 last
    assert p.lost().node == 0
    assert p.failed().node == 2
    assert p.failed().node == 1
    assert p.failed().node == 0  # round and round


def test_a_failed_first_connection_tries_the_nodes_in_order() -> None:
    p = FailoverPolicy(3, min_s=1, max_s=30, uniform=lambda a, b: a)
    assert [p.failed().node for _ in range(4)] == [1, 2, 0, 1]
    p.connected()
    assert p.failovers == 0  # the first connection is no failover


def test_losing_a_non_preferred_node_tries_the_preferred_one_next() -> None:
    p = FailoverPolicy(2, min_s=1, max_s=30, uniform=lambda a, b: a)
    p.connected()
    assert p.lost().node == 1
    p.connected()
    assert p.lost().node == 0
    p.connected()
    assert p.failovers == 2


def test_single_node_reconnects_to_itself() -> None:
    p = FailoverPolicy(1, min_s=1, max_s=30, uniform=lambda a, b: a)
    p.connected()
    assert p.lost().node == 0
    assert p.failed().node == 0


def test_delay_window_doubles_per_failed_attempt_up_to_the_maximum() -> None:
    windows, uniform = recording("high")
    p = FailoverPolicy(3, min_s=1, max_s=10, uniform=uniform)  # type: ignore[arg-type]
    p.connected()
    delays = [p.lost().delay_s] + [p.failed().delay_s for _ in range(5)]
    assert windows == [(1, 2), (1, 4), (1, 8), (1, 10), (1, 10), (1, 10)]
    assert delays == [2, 4, 8, 10, 10, 10]
    p.connected()
    assert p.lost().delay_s == 2  # a connection resets the window
    assert p.last_delay_s == 2


def test_delays_are_spread_over_the_window_not_one_value() -> None:
    """Many stations losing the same node draw different delays: no reconnect wave."""
    rng = random.Random(7)
    delays = []
    for _ in range(300):
        p = FailoverPolicy(3, min_s=1, max_s=30, uniform=rng.uniform)
        p.connected()
        delays.append(p.lost().delay_s)
    assert min(delays) >= 1 and max(delays) <= 2
    buckets = [0] * 4
    for d in delays:
        buckets[min(3, int((d - 1) * 4))] += 1
    assert all(40 < b < 110 for b in buckets), buckets  # about 75 each


def test_a_misbehaving_random_source_is_clamped_to_the_window() -> None:
    p = FailoverPolicy(2, min_s=1, max_s=5, uniform=lambda a, b: 1e9)
    assert p.failed().delay_s == 4  # first failed attempt: window [1, 4]
    p = FailoverPolicy(2, min_s=1, max_s=5, uniform=lambda a, b: -3)
    assert p.failed().delay_s == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nodes": 0, "min_s": 1, "max_s": 2}, "node"),
        ({"nodes": 1, "min_s": 3, "max_s": 2}, "min_s"),
    ],
)
def test_policy_arguments_are_checked(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FailoverPolicy(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ configuration
BASE = {
    "station": {"id": "ST-1", "operator_id": "DE*ICE", "location": "here"},
    "evse": [{"id": "DE*ICE*E000001*1"}],
}


def config_error(mqtt: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "mqtt": mqtt}, Path("station.toml"))
    return str(info.value)


def test_urls_list_gives_the_nodes_preferred_first() -> None:
    cfg = MqttConfig(urls=["mqtt://a:1884", "mqtt://b", "mqtt://c:1885"])
    assert cfg.nodes == ["mqtt://a:1884", "mqtt://b", "mqtt://c:1885"]
    assert (cfg.host, cfg.port, cfg.tls) == ("a", 1884, False)
    assert MqttConfig(url="mqtts://x").nodes == ["mqtts://x"]


def test_url_and_urls_together_is_a_clear_config_error() -> None:
    msg = config_error({"url": "mqtt://a", "urls": ["mqtt://b"]})
    assert "station.toml" in msg and "mqtt" in msg
    assert "either url (one broker) or urls (the nodes of a cluster), not both" in msg


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        ([], "at least 1 item"),
        (["mqtt://a", "http://b"], "scheme must be mqtt:// or mqtts://"),
        (["mqtt://a", "mqtts://b"], "same scheme"),
        (["mqtt://a", "mqtt://a:1883"], "listed twice"),
        (["mqtt://:1883"], "no host"),
        ("mqtt://a", "valid list"),
    ],
)
def test_bad_urls_are_refused_with_the_key(urls: object, message: str) -> None:
    msg = config_error({"urls": urls})
    assert "mqtt.urls" in msg and message in msg


def test_reconnect_bounds_are_checked() -> None:
    assert "reconnect_max_s must not be smaller" in config_error(
        {"reconnect_min_s": 5.0, "reconnect_max_s": 2.0}
    )
    assert "mqtt.reconnect_min_s" in config_error({"reconnect_min_s": 0.0})


def test_a_node_that_answers_but_fails_the_attempt_gets_a_few_tries_before_the_next() -> None:
    """A busy node (connected, then dropped the attempt or refused a subscription) is tried
    again: hopping between busy cluster nodes makes them fight over the station's session."""
    p = FailoverPolicy(3, min_s=1, max_s=30, uniform=lambda a, b: a)
    p.connected()
    assert p.lost().node == 1
    assert [p.failed(answered=True).node for _ in range(3)] == [1, 1, 2]
    assert p.failed().node == 0  # unreachable: on at once
    assert p.failed(answered=True).node == 0
    p.connected()
    assert p.node == 0 and p.failovers == 0  # back on the node it had: no failover
