"""Start an MLflow server on loopback over the runs of one `dvc repro`, open the compare view of
the eight score runs in headless Chromium, and save a screenshot.

    python scripts/mlflow_compare_screenshot.py [--db mlflow.db] [--out docs/mlflow_compare.png]

Needs Debian's chromium (`apt-get install -y chromium`). The server is stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit("mlflow server exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit("mlflow server did not start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="mlflow.db")
    ap.add_argument("--experiment", default="cem")
    ap.add_argument("--out", default="docs/mlflow_compare.png")
    ap.add_argument("--size", default="1600,2450", help="window WIDTH,HEIGHT (tall: the metrics table is low on the page)")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("chromium not found: apt-get install -y chromium")
    db = Path(args.db).resolve()
    if not db.exists():
        sys.exit(f"{db} not found: run `dvc repro` first")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                               f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"})
    try:
        wait_for(port, server)
        from mlflow.tracking import MlflowClient
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            sys.exit(f"no experiment '{args.experiment}' in {db}")
        runs = client.search_runs([exp.experiment_id], "tags.`cem.stage` LIKE 'score_%'",
                                  order_by=["attributes.start_time DESC"], max_results=200)
        latest = {}
        for r in runs:  # the newest score run of each sampler
            latest.setdefault(r.data.tags.get("sampler"), r)
        ids = [r.info.run_id for r in latest.values()]
        if not ids:
            sys.exit("no score runs found")
        query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([exp.experiment_id])})
        url = f"{uri}/#/compare-runs?{query}"
        out = Path(args.out).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        profile = tempfile.mkdtemp()
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--hide-scrollbars", f"--window-size={args.size}",
                        "--virtual-time-budget=20000", f"--screenshot={out}", url],
                       check=True, capture_output=True, timeout=180)
        print(f"{len(ids)} score runs; compare view {url}\nscreenshot: {out}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
