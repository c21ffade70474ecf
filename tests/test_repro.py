"""`cem repro --jobs N` (pipeline/repro.py): DVC's stages side by side, with DVC's own bookkeeping."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.errors import CemError
from pipeline.params import parse_params
from pipeline.repro import downstream_counts, parse_dot, read_dag, select, thread_share_note, to_check

from .conftest import ROOT, cem, tiny_params, write_params

DOT = """strict digraph {
"prepare";
"train";
"sample@a";
"sample@b";
"report";
"prepare" -> "train";
"train" -> "sample@a";
"train" -> "sample@b";
"sample@a" -> "report";
"sample@b" -> "report";
}
"""


def test_parse_dot_keeps_dvc_order_and_direct_upstream():
    dag = parse_dot(DOT)
    assert list(dag) == ["prepare", "train", "sample@a", "sample@b", "report"]
    assert dag == {"prepare": [], "train": ["prepare"], "sample@a": ["train"], "sample@b": ["train"],
                   "report": ["sample@a", "sample@b"]}


def test_select_takes_the_targets_and_everything_upstream():
    dag = parse_dot(DOT)
    assert select(dag, []) == dag
    assert select(dag, ["sample@b"]) == {"prepare": [], "train": ["prepare"], "sample@b": ["train"]}
    with pytest.raises(CemError, match="no stage sample@c in dvc.yaml"):
        select(dag, ["sample@c"])


def test_only_changed_stages_and_what_is_downstream_of_them_are_checked():
    dag = parse_dot(DOT)
    assert to_check(dag, set()) == set()
    assert to_check(dag, {"sample@a"}) == {"sample@a", "report"}
    assert to_check(dag, {"train", "sample@b"}) == {"train", "sample@a", "sample@b", "report"}


def test_stages_with_more_waiting_on_them_come_first():
    counts = downstream_counts(parse_dot(DOT))
    assert counts == {"prepare": 4, "train": 3, "sample@a": 1, "sample@b": 1, "report": 0}


def test_stages_that_would_share_the_cores_are_named_with_their_share(tmp_path):
    """N stages at once, each with a thread pool as large as the machine, contend for the cores (measured:
    docs/performance.md): the note names the sections whose runtime.threads is null and runs on the CPU."""
    p = parse_params(tiny_params(tmp_path, "unused", score={"runtime": {"device": "cuda"}}))  # train_*: 1 thread
    note = thread_share_note(p, 4, 16)
    assert note.startswith("note: 4 stages at once on 16 CPU cores, and sample uses every core")
    assert "runtime.threads: 4" in note and "--set sample.runtime.threads=4" in note
    assert thread_share_note(p, 4, 16, cuda=True) is None  # device: auto runs on the GPU there
    assert thread_share_note(parse_params(tiny_params(tmp_path, "unused", sample={"runtime": {"device": "cpu"}})),
                             4, 16, cuda=True).startswith("note: 4 stages at once on 16 CPU cores, and sample uses")
    assert thread_share_note(p, 1, 16) is None  # one stage at a time: nothing shares
    assert thread_share_note(p, 3, 2).endswith("sample.runtime.threads=1 ...`)")  # at least one thread
    pinned = parse_params(tiny_params(tmp_path, "unused", sample={"runtime": {"threads": 2}},
                                      score={"runtime": {"threads": 2}}))
    assert thread_share_note(pinned, 4, 16) is None


def _stage(name: str, seconds: float, deps: list[str], fail: bool = False) -> dict:
    """A toy stage: records when it ran, sleeps, writes its output (or fails with a one-line error)."""
    code = (f"import json,sys,time; t=time.time(); time.sleep({seconds}); "
            + ("print('error: the toy stage broke', file=sys.stderr); sys.exit(3)" if fail else
               f"json.dump({{'start': t, 'end': time.time()}}, open('{name}.json', 'w'))"))
    return {"cmd": f'{sys.executable} -c "{code}"', "deps": deps, "outs": [f"{name}.json"]}


@pytest.fixture
def toy(tmp_path) -> Path:
    """A DVC project of five stages (a diamond and a tail) with a complete params.yaml for `cem`."""
    write_params(tmp_path, tiny_params(tmp_path, "unused"))
    (tmp_path / "input.txt").write_text("x")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def _write_dvc_yaml(folder: Path, fail: str = "") -> None:
    stages = {"first": _stage("first", 0.1, ["input.txt"]),
              "left": _stage("left", 3.0, ["first.json"], fail=fail == "left"),
              "right": _stage("right", 3.0, ["first.json"]),
              "join": _stage("join", 0.1, ["left.json", "right.json"]),
              "tail": _stage("tail", 0.1, ["join.json"])}
    (folder / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))


def _span(folder: Path, name: str) -> tuple[float, float]:
    d = json.loads((folder / f"{name}.json").read_text())
    return d["start"], d["end"]


def test_independent_stages_run_side_by_side_and_dvc_records_them(toy):
    _write_dvc_yaml(toy)
    proc = cem("repro", "--jobs", "2", cwd=toy)
    assert "5 ran" in proc.stderr
    assert "note: 2 stages at once" in proc.stderr and "sample, score use every core" in proc.stderr
    left, right, join = _span(toy, "left"), _span(toy, "right"), _span(toy, "join")
    first = _span(toy, "first")
    assert left[0] < right[1] and right[0] < left[1], "left and right did not overlap"
    assert first[1] <= min(left[0], right[0]) and join[0] >= max(left[1], right[1]), "the DAG's order was broken"
    assert (toy / "logs" / "repro" / "left.log").exists()
    # DVC recorded every stage: its own repro finds nothing to do, and ours says all are unchanged
    again = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=toy, capture_output=True, text=True, check=True)
    assert "Running stage" not in again.stdout + again.stderr
    assert "all 5 stage(s) up to date" in cem("repro", "-j", "3", cwd=toy).stderr  # one `dvc status`, no stage
    # a changed stage: DVC checks it and what is downstream of it, nothing else
    pipeline = yaml.safe_load((toy / "dvc.yaml").read_text())
    pipeline["stages"]["right"]["cmd"] += " "  # right's command changes
    (toy / "dvc.yaml").write_text(yaml.safe_dump(pipeline))
    out = cem("repro", "-j", "2", cwd=toy).stderr
    assert "3 of 5 stage(s) to check" in out and "3 ran" in out and "2 unchanged" in out, out
    # a target brings only itself and its upstream up to date
    (toy / "input.txt").write_text("y")
    out = cem("repro", "right", "-j", "1", cwd=toy).stderr
    assert "3 ran" not in out and "2 ran" in out and "join" not in out


def test_a_failing_stage_stops_what_depends_on_it_in_one_line(toy):
    _write_dvc_yaml(toy, fail="left")
    proc = cem("repro", "-j", "2", cwd=toy, check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stage left failed: the toy stage broke (its whole output: ")
    assert "logs/repro/left.log" in last
    assert (toy / "right.json").exists(), "a stage already running is let finish"
    assert not (toy / "join.json").exists() and not (toy / "tail.json").exists()
    assert "2 not started" in proc.stderr


def test_unknown_target_and_bad_jobs_are_one_line_errors(toy):
    _write_dvc_yaml(toy)
    proc = cem("repro", "nope", "-j", "2", cwd=toy, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: no stage nope in dvc.yaml")
    proc = cem("repro", "-j", "0", cwd=toy, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "--jobs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = cem("repro", cwd=toy, check=False)  # how many side by side is the user's choice, never a default
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "--jobs" in proc.stderr
    proc = cem("repro", "-j", "2", cwd=toy.parent, check=False)  # no DVC project here
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: dvc dag failed in ")


WINDS_DOWN = ("import signal, sys, time, pathlib\n"
              "def down(*_):\n"
              "    time.sleep(2); pathlib.Path('wound-down').write_text('yes'); sys.exit(130)\n"
              "signal.signal(signal.SIGTERM, down)\n"
              "pathlib.Path('handler-set').write_text('yes')\n"
              "time.sleep(60)\n")


def test_sigterm_stops_the_running_stages_and_waits_for_them(toy):
    """A stage takes a moment to end (a `cem` stage marks its MLflow run KILLED and releases its lock):
    `cem repro` returns only once it has, so a run started right after never meets it."""
    (toy / "slow.py").write_text(WINDS_DOWN)
    stages = {"slow": {"cmd": f"{sys.executable} slow.py", "deps": ["input.txt"], "outs": ["slow.json"]}}
    (toy / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    proc = subprocess.Popen([sys.executable, "-m", "stages.cli", "repro", "-j", "1"], cwd=toy,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (toy / "handler-set").exists() and time.time() < deadline:  # the stage is running
        time.sleep(0.2)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted"
    assert time.time() - t0 < 30
    assert (toy / "wound-down").exists(), "cem repro returned before its stage had ended"
    # DVC itself was not signalled: it saw its command fail and ended by itself, never mid-write of dvc.lock
    assert "failed to reproduce 'slow'" in (toy / "logs" / "repro" / "slow.log").read_text()
    left = subprocess.run(["pgrep", "-f", f"{sys.executable} slow.py"], capture_output=True, text=True).stdout.split()
    assert not left, "the stage's process outlived cem repro"


def test_a_groups_members_are_found_without_its_leader():
    from pipeline.repro import _group_members
    leader = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        child = int(leader.stdout.readline())
        members = _group_members(leader.pid)
        assert child in members and leader.pid not in members
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def test_the_projects_dag_is_read_from_dvc():
    dag = select(read_dag(ROOT), ["report"])
    assert dag["prepare"] == [] and "sample@ta" in dag["score@ta"] and "reference_stats" in dag["score@ta"]


def test_no_stage_outlives_a_killed_scheduler(toy):
    """`kill -9` of `cem repro`: its `dvc repro` children get SIGTERM (PR_SET_PDEATHSIG), and each `cem`
    stage under them gets it in turn from DVC's death (stages/cli.py)."""
    stages = {"slow": {"cmd": f"{sys.executable} -c \"import time; time.sleep(61)\"", "deps": ["input.txt"],
                       "outs": ["slow.json"]}}
    (toy / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    proc = subprocess.Popen([sys.executable, "-m", "stages.cli", "repro", "-j", "1"], cwd=toy,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = toy / "logs" / "repro" / "slow.log"
    deadline = time.time() + 60
    while "Running stage" not in (log.read_text() if log.exists() else "") and time.time() < deadline:
        time.sleep(0.2)
    try:
        assert subprocess.run(["pgrep", "-f", "single-item slow"], capture_output=True).returncode == 0
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.time() + 20
        while subprocess.run(["pgrep", "-f", "single-item slow"], capture_output=True).returncode == 0:
            assert time.time() < deadline, "dvc repro outlived its killed scheduler"
            time.sleep(0.2)
    finally:  # the toy command is not a `cem` stage: DVC's death does not end it
        subprocess.run(["pkill", "-f", "time.sleep.61"])
