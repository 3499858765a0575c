"""A Hub that accepts connections and never answers, an unreachable or disabled Hub, bad timeouts:
every call ends within its timeout with one error that says what happened and what to do."""

from __future__ import annotations

import json
import time

import pytest
from faultkit import one_line_error, run_console, run_python, tiny_abmil

from zoo import hub


def _isolated(tmp_path, endpoint: str, **extra: str) -> dict[str, str]:
    return {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf-home"), "ZOO_HUB_TIMEOUT": "2", **extra}


def test_silent_endpoint_pull_load_push_end_within_the_timeout(silent_endpoint, tmp_path, model_folder):
    env = _isolated(tmp_path, silent_endpoint)
    start = time.monotonic()
    proc = run_console("zoo", ["pull", "someorg/abmil"], timeout=90, **env)
    line = one_line_error(proc, "zoo pull: error: someorg/abmil:")
    assert "did not answer within 2 s" in line and "ZOO_HUB_TIMEOUT" in line and "not in the cache" in line
    proc = run_console("zoo", ["push", str(model_folder), "someorg/abmil"], timeout=90, **env)
    line = one_line_error(proc, "zoo push: error: someorg/abmil:")
    assert "did not answer within 2 s" in line and "nothing was pushed" in line
    # the Python API, with the timeout= argument winning over the variable
    code = """
import time, zoo
t = time.monotonic()
try:
    zoo.load("semamil-camelyon16", timeout=1)
except zoo.hub.ZooLoadError as e:
    print(round(time.monotonic() - t, 1), str(e).splitlines()[0])
"""
    proc = run_python(code, timeout=90, **_isolated(tmp_path, silent_endpoint, ZOO_HUB_TIMEOUT="50"))
    assert proc.returncode == 0, proc.stderr
    seconds, message = proc.stdout.strip().split(" ", 1)
    assert "did not answer within 1 s" in message and float(seconds) < 20
    assert time.monotonic() - start < 150  # before the fix the first command alone waited forever


def test_unreachable_and_offline_messages_say_what_to_do(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    proc = run_console("zoo", ["pull", "someorg/abmil"], timeout=90, **_isolated(tmp_path, closed))
    line = one_line_error(proc, "zoo pull: error:")
    assert "is not reachable" in line and "Check the network and HF_ENDPOINT" in line
    proc = run_console(
        "zoo", ["pull", "someorg/abmil"], timeout=90, **_isolated(tmp_path, closed, HF_HUB_OFFLINE="1")
    )
    line = one_line_error(proc, "zoo pull: error:")
    assert "HF_HUB_OFFLINE=1" in line and "Unset HF_HUB_OFFLINE" in line


def test_timeout_setting_is_checked(monkeypatch):
    assert hub.hub_timeout_seconds() == hub.DEFAULT_HUB_TIMEOUT == 30.0
    monkeypatch.setenv("ZOO_HUB_TIMEOUT", "7.5")
    assert hub.hub_timeout_seconds() == 7.5 and hub.hub_timeout_seconds(3) == 3.0
    for bad in ("abc", "0", "-1", "nan", "inf"):
        monkeypatch.setenv("ZOO_HUB_TIMEOUT", bad)
        with pytest.raises(ValueError, match="ZOO_HUB_TIMEOUT"):
            hub.hub_timeout_seconds()
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        hub.pull("someorg/x", timeout=0)


def _transport_state(session) -> list:
    if hasattr(session, "event_hooks"):  # huggingface_hub >= 1: httpx
        return list(session.event_hooks["request"])
    return list(session.adapters.items())  # huggingface_hub < 1: requests


def test_hub_timeout_is_removed_after_the_call(hub_server, tmp_path):
    from huggingface_hub import get_session

    before = _transport_state(get_session())
    with hub.hub_timeout(5) as seconds:
        assert seconds == 5.0 and _transport_state(get_session()) != before
    assert _transport_state(get_session()) == before
    # a working Hub is unaffected: a real round trip under a short timeout
    folder = hub.save_pretrained(tiny_abmil(), tmp_path / "m")
    sha = hub.push_folder(folder, "faults-org/timeout-ok", timeout=5)
    assert json.loads((hub.pull("faults-org/timeout-ok", timeout=5) / "config.json").read_text())
    assert sha and _transport_state(get_session()) == before
