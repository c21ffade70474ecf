"""Bad input of every kind: one line, a non-zero exit, nothing written, no MLflow run opened.
(The audit of issue 14, each failure re-run as a test.)"""
import io
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import time
import zlib
import struct

import pytest
from PIL import Image

from tests.conftest import ROOT, cem, tiny_params, write_params


def one_line(proc, code=None):
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert proc.returncode != 0 and (code is None or proc.returncode == code), proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _png(w=32, h=32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar, name, data=b"", kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _archive(tmp_path, extra):
    """A valid little archive (train/test x two classes) plus the `extra` members."""
    path = tmp_path / "src.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for cls in ("a", "b"):
                _add(tar, f"d/{split}/{cls}/0.png", _png())
        extra(tar)
    return path


def _prepare_fails(tmp_path, source):
    raw = tiny_params(tmp_path, source)
    db = tmp_path / "mlflow.db"
    params = write_params(tmp_path, raw)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = cem("prepare", "--params", str(params), check=False, env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    line = one_line(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no data folder, no MLflow store
    return line


def _huge_png_header() -> bytes:
    """A valid PNG header claiming 40000x40000 pixels (a decompression bomb's signature)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("case, extra, words", [
    ("dotdot", lambda t: _add(t, "d/train/a/../../../../evil.png", _png()), "unsafe member"),
    ("absolute", lambda t: _add(t, "/tmp/train/a/1.png", _png()), "unsafe member"),
    ("symlinked dir", lambda t: (_add(t, "d/train/c", kind=tarfile.SYMTYPE, linkname="../../etc"),
                                 _add(t, "d/train/c/1.png", _png())), "lies under the link"),
    ("huge member", lambda t: _add(t, "d/train/a/big.png", b"\0" * (2 << 20)), "bytes, more than"),
    ("bomb", lambda t: _add(t, "d/train/a/bomb.png", _huge_png_header()), "bomb.png (DecompressionBombError)"),
])
def test_unsafe_archives_are_refused_naming_the_member(tmp_path, case, extra, words):
    (tmp_path / "src").mkdir()
    line = _prepare_fails(tmp_path, _archive(tmp_path / "src", extra))
    assert words in line, line


@pytest.mark.parametrize("content", [b"", os.urandom(4096)])
def test_empty_or_random_source_file_is_one_line(tmp_path, content):
    src = tmp_path / "src" / "data.tar.gz"
    src.parent.mkdir()
    src.write_bytes(content)
    line = _prepare_fails(tmp_path, src)
    assert "data.tar.gz" in line


def _params(tmp_path, image_folder, **sections):
    return write_params(tmp_path, tiny_params(tmp_path, image_folder, **sections))


def test_set_with_broken_yaml_is_one_line(tmp_path, image_folder):
    line = one_line(cem("prepare", "--params", str(_params(tmp_path, image_folder)), "--set", "data.seed=[1",
                        check=False), 2)
    assert "--set data.seed=[1: not valid YAML" in line


def test_params_path_that_is_a_directory_or_not_utf8(tmp_path):
    assert "is not a file" in one_line(cem("prepare", "--params", str(tmp_path), check=False), 2)
    bad = tmp_path / "p.yaml"
    bad.write_bytes(b"data:\n  source: \xff\xfe\n")
    assert "not UTF-8" in one_line(cem("prepare", "--params", str(bad), check=False), 2)


def test_exponent_numbers_are_numbers():
    from pipeline.params import load_params
    p = load_params(ROOT / "params.yaml", ["train_sup.optim.lr=1e-3", "data.cov_ridge=1e10"])
    assert p.train_sup.optim.lr == 1e-3 and p.data.cov_ridge == 1e10


def test_attack_with_eps_but_no_steps_is_refused(tmp_path, image_folder):
    params = _params(tmp_path, image_folder, train_sup={"attack": {"eps": 0.5, "steps": 0}})
    line = one_line(cem("prepare", "--params", str(params), check=False), 2)
    assert "train_sup.attack" in line and "steps is 0" in line


def test_shard_size_not_a_multiple_of_batch_size_is_a_params_error(tmp_path, image_folder):
    params = _params(tmp_path, image_folder, sample={"cs": {"shard_size": 15}})
    line = one_line(cem("prepare", "--params", str(params), check=False), 2)
    assert "sample.cs: shard_size (15) must be a multiple of batch_size (10)" in line


def _runs(db):
    """Runs in the store; 0 while MLflow is still creating it (no file, or no `runs` table yet)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=30) as con:
            return con.execute("select count(*) from runs").fetchone()[0]
    except sqlite3.OperationalError as exc:  # MLflow creates the tables while we look: not there yet
        if "no such table" in str(exc) or "locked" in str(exc):
            return 0
        raise


def _wait_for_running_run(db, proc, timeout=180):
    """Block until the stage's run is in the store as RUNNING (the process may still be starting)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the stage ended before its run was seen"
        if _runs(db) > 0:
            with sqlite3.connect(db, timeout=30) as con:
                if con.execute("select status from runs").fetchall() == [("RUNNING",)]:
                    return
        time.sleep(0.5)
    raise AssertionError(f"no RUNNING run in {db} after {timeout} s")


@pytest.mark.parametrize("override, words", [
    ("train_sup.optim.batch_size=5000", "exceeds the 200 prepared training images"),
    ("train_sup.runtime.device=cuda", "no CUDA device"),
])
def test_cross_field_errors_come_before_any_mlflow_run(prepared, tmp_path, override, words):
    if "cuda" in override:
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    tmp, _ = prepared
    db = tmp_path / "mlflow.db"
    proc = cem("train", "supervised", "--params", str(tmp / "params.yaml"), "--set", override, check=False,
               env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    assert words in one_line(proc)
    assert _runs(db) == 0


def test_silent_mlflow_server_fails_fast_with_one_line(prepared, silent_server):
    tmp, _ = prepared
    proc = cem("train", "reference", "--params", str(tmp / "params.yaml"), check=False,
               env={"MLFLOW_TRACKING_URI": silent_server.url}, timeout=120)  # on 127.0.0.1: accepts, never answers
    ended = time.perf_counter()
    assert f"MLflow tracking store {silent_server.url} failed" in one_line(proc)
    # one request, no retries, given up after the 5 s request timeout (MLflow's defaults: 120 s, 7 retries).
    # Timed from the connection, not from the start: a start-up on a busy core takes 5-15 s of its own.
    assert len(silent_server.accepted) == 1, silent_server.accepted
    assert ended - silent_server.accepted[0] < 15, ended - silent_server.accepted[0]


def test_read_only_store_is_one_line(prepared, tmp_path):
    _, raw = prepared
    raw = json.loads(json.dumps(raw))
    raw["data"]["out_dir"] = str(tmp_path / "data")  # never rewrite the shared fixture's manifest (lineage)
    params = write_params(tmp_path, raw)
    db = tmp_path / "mlflow.db"
    cem("prepare", "--params", str(params), env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    before = _runs(db)
    ro = f"sqlite:///file:{db}?mode=ro&uri=true"  # read-only even for root (chmod is not)
    # cwd: MLflow makes the "parent folder" of the path it reads from this URI, `file:/...`, relative
    # to the working directory; run there so that folder lands in tmp_path, not in the checkout
    line = one_line(cem("prepare", "--params", str(params), check=False, cwd=tmp_path,
                        env={"MLFLOW_TRACKING_URI": ro}))
    assert "MLflow tracking store" in line and "readonly database" in line
    assert _runs(db) == before


def _long_training(prepared, tmp_path):
    """A `cem train reference` that runs for minutes, in the background: (process, params path, db)."""
    _, raw = prepared
    raw = json.loads(json.dumps(raw))
    raw["train_ref"]["out_dir"] = str(tmp_path / "ref")
    raw["metrics_dir"] = str(tmp_path / "metrics")  # never the shared fixture's metrics
    raw["train_ref"]["optim"]["epochs"] = 200.0
    params = write_params(tmp_path, raw)
    db = tmp_path / "mlflow.db"
    env = {**os.environ, "CI": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.cli", "train", "reference", "--params", str(params)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, params, db


def test_runs_killed_by_sigkill_are_marked_when_the_stage_runs_again(prepared, tmp_path):
    proc, params, db = _long_training(prepared, tmp_path)
    _wait_for_running_run(db, proc)
    time.sleep(2)
    proc.kill()
    proc.wait()
    with sqlite3.connect(db) as con:
        assert con.execute("select status from runs").fetchall() == [("RUNNING",)]
    cem("train", "reference", "--params", str(params), "--set", "train_ref.optim.epochs=1", "--restart",
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    with sqlite3.connect(db) as con:
        assert sorted(s for (s,) in con.execute("select status from runs")) == ["FINISHED", "KILLED"]


def test_a_second_training_on_the_same_out_dir_refuses(prepared, tmp_path):
    first, params, _ = _long_training(prepared, tmp_path)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / ".ref.lock").exists():
            time.sleep(0.2)
        time.sleep(1)
        second = cem("train", "reference", "--params", str(params), check=False)
        assert "another cem process is writing" in one_line(second)
    finally:
        first.kill()
        first.wait()


def test_polling_a_store_that_mlflow_is_still_creating_is_not_an_error(tmp_path):
    db = tmp_path / "mlflow.db"
    sqlite3.connect(db).close()  # the file exists, its tables do not yet (MLflow's first seconds)
    assert _runs(db) == 0


def test_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    path = tmp_path / "params.yaml"
    path.write_text(bomb)
    proc = cem("prepare", "--params", str(path), check=False)
    assert "expands to more than 100,000 values" in one_line(proc, 2)
    assert len(proc.stderr) < 500


def test_params_whose_top_level_is_a_list_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- data\n- train_sup\n")
    assert "top level must be a mapping" in one_line(cem("prepare", "--params", str(path), check=False), 2)


def test_huge_values_are_not_echoed_in_full(tmp_path, image_folder):
    params = _params(tmp_path, image_folder)
    proc = cem("prepare", "--params", str(params), "--set", "data.seed=" + "x" * 100_000, check=False)
    assert "data.seed" in one_line(proc, 2) and len(proc.stderr) < 1000


def test_a_lock_path_that_is_a_directory_is_one_line(prepared, tmp_path):
    tmp, _ = prepared
    (tmp_path / ".ref.lock").mkdir()
    _, raw = prepared
    raw = json.loads(json.dumps(raw))
    raw["train_ref"]["out_dir"] = str(tmp_path / "ref")
    params = write_params(tmp_path, raw)
    line = one_line(cem("train", "reference", "--params", str(params), check=False))
    assert "cannot open the lock file" in line and ".ref.lock" in line


def test_a_failed_write_leaves_no_temp_file_and_is_one_line(tmp_path, monkeypatch):
    import torch
    from pipeline.files import atomic_torch_save
    from pipeline.errors import CemError

    def full_disk(obj, f, *a, **k):
        open(f, "wb").write(b"\0" * 1024)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 896 vs 790")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CemError, match="is the disk full"):
        atomic_torch_save({"x": 1}, tmp_path / "ckpt.pt")
    assert list(tmp_path.iterdir()) == []


def test_an_archive_too_large_in_total_is_refused_while_reading(tmp_path, monkeypatch):
    import pipeline.data as data
    monkeypatch.setattr(data, "MAX_TOTAL_BYTES", 4096)  # the same rule at a test's size
    src = tmp_path / "src"
    src.mkdir()
    path = _archive(src, lambda t: [_add(t, f"d/train/a/{i}.png", _png() + b"\0" * 900) for i in range(8)])
    with pytest.raises(data.CemError, match="exceed 4,096 bytes in all"):
        data.load_and_fit(str(path), str(tmp_path / "dl"), None, None, 1e-4, 0)


def _where(pid: int) -> str:
    """What a process that did not end is doing (state, kernel wait channel, main thread's syscall), so a
    failure says where the stage was. (On loaded cores its SIGTERM used to land inside a garbage-collector
    callback, which drops what a handler raises, and the stage trained on: pipeline/interrupts.py.)"""
    parts = []
    for name in ("status", "wchan", "syscall"):
        try:
            text = open(f"/proc/{pid}/{name}").read()
        except OSError as exc:
            text = exc.__class__.__name__
        if name == "status":
            text = " ".join(ln for ln in text.splitlines() if ln.startswith(("State", "Threads", "SigPnd", "ShdPnd")))
        parts.append(f"{name}: {text.strip()}")
    return "; ".join(parts)


def test_a_stage_ends_when_the_dvc_that_started_it_is_killed(prepared, tmp_path):
    """`kill -9` of `dvc repro` must not leave its stage running as an orphan that holds the lock.
    DVC starts a stage as `$SHELL -c CMD` (bash execs the command): a parent started the same way
    is SIGKILLed; the stage must end like Ctrl-C (run KILLED, lock free) within seconds."""
    _, raw = prepared
    raw = json.loads(json.dumps(raw))
    raw["train_ref"]["out_dir"] = str(tmp_path / "ref")
    raw["metrics_dir"] = str(tmp_path / "metrics")
    raw["train_ref"]["optim"]["epochs"] = 200.0
    params = write_params(tmp_path, raw)
    db = tmp_path / "mlflow.db"
    stage = f"exec {sys.executable} -m stages.cli train reference --params {params}"
    parent_code = ("import subprocess, sys, time; "
                   f"p = subprocess.Popen(['bash', '--noprofile', '--norc', '-c', {stage!r}]); "
                   "print(p.pid, flush=True); p.communicate()")
    env = {**os.environ, "CI": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    child = int(parent.stdout.readline())
    try:
        deadline = time.time() + 180
        while time.time() < deadline and _runs(db) == 0:
            time.sleep(0.5)
        time.sleep(2)
        parent.kill()
        parent.wait()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            if open(f"/proc/{child}/stat").read().split()[2] == "Z":
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the stage outlived its parent by 30 s ({_where(child)})")
        with sqlite3.connect(db, timeout=30) as con:
            assert con.execute("select status from runs").fetchall() == [("KILLED",)]
    finally:
        try:
            os.kill(child, 9)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("what", ["resume", "judge", "refstats"])
def test_bad_inputs_are_refused_before_any_mlflow_run(trained, tmp_path, what):
    """A checkpoint to resume from, the judge, the reference statistics: checked before a run opens."""
    tmp, raw = trained
    raw = json.loads(json.dumps(raw))
    db = tmp_path / "mlflow.db"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    if what == "resume":
        params = write_params(tmp_path, raw)
        args = ("train", "reference", "--params", str(params), "--resume", str(bad))
    elif what == "judge":
        raw["score"]["judge"] = str(bad)
        raw["score"]["reference_dir"] = str(tmp_path / "refstats")
        params = write_params(tmp_path, raw)
        args = ("reference-stats", "--params", str(params))
    else:
        (tmp_path / "refstats").mkdir()
        (tmp_path / "refstats" / "classifier.npz").write_bytes(b"PK\x03\x04 broken")
        raw["score"]["reference_dir"] = str(tmp_path / "refstats")
        raw["sample"]["out_dir"] = str(tmp_path / "samples")
        params = write_params(tmp_path, raw)
        cem("sample", "cs", "--params", str(params))
        args = ("score", "cs", "--params", str(params))
    line = one_line(cem(*args, check=False, env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"}))
    assert str(bad) in line or "classifier.npz" in line, line
    assert _runs(db) == 0
