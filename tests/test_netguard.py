"""The suite's own guard (tests/netguard): tests and the processes they start talk to 127.0.0.0/8
only, and no `cem` command phones home (MLflow's usage telemetry is off). Nothing here ever
sends a packet: refusals happen before any connect or lookup."""
import os
import socket
import sys

import pytest

from tests.conftest import NETGUARD, cem

sys.path.insert(0, str(NETGUARD))
import sitecustomize as guard  # noqa: E402


@pytest.mark.parametrize("family, address, ok", [
    (socket.AF_INET, ("127.0.0.1", 5000), True),
    (socket.AF_INET, ("127.8.9.10", 80), True),
    (socket.AF_INET6, ("::1", 80, 0, 0), True),
    (socket.AF_INET, ("localhost", 80), True),
    (socket.AF_INET, ("10.255.255.1", 5000), False),
    (socket.AF_INET, ("192.168.1.1", 80), False),
    (socket.AF_INET, ("8.8.8.8", 53), False),
    (socket.AF_INET6, ("2001:db8::1", 80, 0, 0), False),
    (socket.AF_UNIX, "/tmp/x.sock", True),
])
def test_only_loopback_destinations_are_allowed(family, address, ok):
    assert guard._allowed(family, address) is ok


class _FakeSocket:
    family = socket.AF_INET


def test_a_refused_destination_is_recorded(tmp_path, monkeypatch):
    log = tmp_path / "refused.log"
    monkeypatch.setattr(guard, "_LOG", str(log))
    with pytest.raises(ConnectionRefusedError, match="10.255.255.1"):
        guard.connect(_FakeSocket(), ("10.255.255.1", 5000))
    with pytest.raises(ConnectionRefusedError, match="telemetry.example"):
        guard.getaddrinfo("telemetry.example", 443)
    assert log.read_text().count("refused by tests/netguard") == 2


def test_subprocesses_load_the_guard():
    proc = cem("--help")  # any cem process: the guard is installed before it imports anything
    assert proc.returncode == 0
    import subprocess
    out = subprocess.run([sys.executable, "-c", "import socket; print(socket.socket.connect.__module__)"],
                         capture_output=True, text=True, env=os.environ.copy())
    assert out.stdout.strip() == "sitecustomize"


def test_no_cem_command_phones_home(prepared, tmp_path):
    """Outside CI MLflow would send usage telemetry (a lookup of its config host): `cem` turns it off.
    Run a stage as a user would (no CI / pytest variables) and check the guard recorded nothing."""
    import json

    from tests.conftest import write_params
    _, raw = prepared
    raw = json.loads(json.dumps(raw))
    raw["data"]["out_dir"] = str(tmp_path / "data")  # never the shared fixture's data (its manifest is lineage)
    params = write_params(tmp_path, raw)
    log = tmp_path / "refused.log"
    log.touch()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_CURRENT_TEST", "MLFLOW_DISABLE_TELEMETRY",
                                                           "DO_NOT_TRACK")}
    env.update(CEM_NETGUARD_LOG=str(log), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    import subprocess
    proc = subprocess.run([sys.executable, "-m", "stages.cli", "prepare", "--params", str(params)],
                          cwd=str(NETGUARD.parents[1]), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text() == "", log.read_text()
