"""MLflow: a real `mlflow server` on loopback, `cem prepare` logging to it, read back by the client."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import cem, tiny_params, write_params


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                             "--default-artifact-root", str(tmp_path / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("mlflow server exited at start")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start in 90 s")
    yield uri
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def test_prepare_logs_params_metrics_artifacts_to_a_real_server(mlflow_server, tmp_path, image_folder):
    from mlflow.tracking import MlflowClient
    raw = tiny_params(tmp_path, image_folder, data={"train_per_class": 5, "test_per_class": 2})
    cem("prepare", "--params", str(write_params(tmp_path, raw)), env={"MLFLOW_TRACKING_URI": mlflow_server})
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("tests")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["source"] == str(image_folder)
    assert run.data.params["train_per_class"] == "5"
    assert run.data.metrics["n_train"] == 50
    # where the stage's time went (pipeline/timing.py), on the run beside its own metrics
    m = run.data.metrics
    assert m["time.startup_seconds"] > 0 and m["time.mlflow_seconds"] > 0
    assert m["time.total_seconds"] >= m["time.startup_seconds"] + m["time.mlflow_seconds"]
    assert run.data.tags["cem.stage"] == "prepare"
    manifest = (tmp_path / "data" / "manifest.json").read_text()
    assert run.info.run_id in manifest  # lineage: the output records the run that made it
    assert "manifest.json" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_lineage_tags_link_training_to_data(trained):
    from mlflow.tracking import MlflowClient
    tmp, _ = trained
    client = MlflowClient()
    exp = client.get_experiment_by_name("tests")
    runs = client.search_runs([exp.experiment_id], "tags.`cem.stage` = 'train_supervised'")
    assert runs
    import json
    prepare_run = json.loads((tmp / "data" / "manifest.json").read_text())["mlflow_run_id"]
    assert any(r.data.tags.get("upstream.prepare") == prepare_run for r in runs)


@pytest.mark.parametrize("uri, expected", [
    ("sqlite:///{tmp}/store/mlflow.db", "{tmp}/store/mlruns/cem"),
    ("sqlite:///file:{tmp}/store/mlflow.db?mode=ro&uri=true", "{tmp}/store/mlruns/cem"),  # an SQLite URI filename
    ("http://127.0.0.1:5000", None),  # a server keeps its own artifact root
    ("file://{tmp}/mlruns", None),
    ("sqlite:///:memory:", None),
])
def test_a_sqlite_store_puts_new_experiments_artifacts_beside_its_database(tmp_path, uri, expected):
    from pipeline.tracking import artifacts_beside
    location = artifacts_beside(uri.format(tmp=tmp_path), "cem")
    assert location == (expected and Path(expected.format(tmp=tmp_path)).as_uri())


def test_a_stage_run_elsewhere_keeps_its_artifacts_with_its_store(tmp_path, image_folder):
    """MLflow's default would put them in `./mlruns` of the folder the stage ran in."""
    from mlflow.tracking import MlflowClient
    raw = tiny_params(tmp_path, image_folder, data={"train_per_class": 5, "test_per_class": 2})
    params = write_params(tmp_path, raw)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store = f"sqlite:///{tmp_path}/store/mlflow.db"
    cem("prepare", "--params", str(params), cwd=elsewhere, env={"MLFLOW_TRACKING_URI": store})
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert (tmp_path / "store" / "mlruns" / "tests" / run.info.run_id / "artifacts" / "manifest.json").is_file()
    assert list(elsewhere.iterdir()) == []
