"""Shared fixtures: small synthetic CIFAR-like data (class = a distinct mean colour plus texture),
an isolated MLflow store, and a runner for the `cem` CLI. No test touches the network."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"]
TINY_ARCH = {"name": "airbench", "widths": [8, 16, 32]}


def class_colour(c: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + c)
    return rng.uniform(0.15, 0.85, size=3)


def make_image(c: int, rng: np.random.Generator) -> np.ndarray:
    """A 32x32 RGB image of class c: its colour, a class-specific stripe pattern, pixel noise."""
    base = class_colour(c)[None, None, :] * np.ones((32, 32, 3))
    stripes = 0.12 * np.sin(np.arange(32) * (c + 1) * np.pi / 16)[None, :, None]
    img = base + stripes + rng.normal(0, 0.06, size=(32, 32, 3))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def write_image_folder(root: Path, train_per_class: int = 20, test_per_class: int = 10, seed: int = 0,
                       num_classes: int = 10) -> Path:
    """A synthetic ImageFolder (train/<class>/*.png, test/<class>/*.png); names sort in class order."""
    rng = np.random.default_rng(seed)
    names = CLASSES if num_classes == 10 else [f"c{c:03d}" for c in range(num_classes)]
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(make_image(c, rng)).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imgs") / "synthetic")


@pytest.fixture(scope="session")
def image_tar(tmp_path_factory, image_folder) -> Path:
    path = tmp_path_factory.mktemp("tar") / "synthetic.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(image_folder, arcname="synthetic")
    return path


LONGEST_FILES_FIRST = ("test_gpu_acceptance.py", "test_bad_input.py", "test_sample_integrity.py", "test_inception.py",
                       "test_samplers.py", "test_distributed.py", "test_repro.py", "test_attacks.py", "test_train.py",
                       "test_scoring.py", "test_data.py")
"""Scheduling only (measured seconds per file, most first; docs/performance.md, "The test suite and CI on
2 cores"). pytest-xdist (`--dist loadfile --no-loadscope-reorder`) hands out test files in collection
order; a long file handed out late runs alone at the end while the other worker idles. The files that
take longest go first, the rest follow in their usual order; the order inside a file is kept, and no
test depends on another file's having run."""


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order kept


def pytest_configure(config):
    """In each of N test processes, torch computes on its share of the cores, not on all of them: N pools
    as large as the machine on the same cores slow every in-process computation (docs/performance.md).
    Stage processes started by the tests keep their own `runtime.threads`."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")  # set in xdist's workers only
    if workers:
        import torch
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(workers)))


NETGUARD = Path(__file__).resolve().parent / "netguard"


@pytest.fixture(autouse=True, scope="session")
def loopback_only(tmp_path_factory):
    """Tests talk to 127.0.0.0/8 only: every Python process the suite starts loads
    tests/netguard/sitecustomize.py (PYTHONPATH), which refuses and records any other destination;
    the suite fails at its end if anything was recorded (even where a library swallowed the error)."""
    log = tmp_path_factory.mktemp("netguard") / "refused.log"
    log.touch()
    old = {k: os.environ.get(k) for k in ("PYTHONPATH", "CEM_NETGUARD_LOG")}
    os.environ["CEM_NETGUARD_LOG"] = str(log)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(NETGUARD), str(ROOT)] + ([old["PYTHONPATH"]] if old["PYTHONPATH"] else []))
    sys.path.insert(0, str(NETGUARD))
    import sitecustomize as guard  # noqa: F401  (tests/netguard's, first on sys.path now)
    if getattr(guard, "install", None) is None:  # another sitecustomize was imported at start-up
        import importlib.util
        spec = importlib.util.spec_from_file_location("cem_netguard", NETGUARD / "sitecustomize.py")
        guard = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(guard)
    guard.install()
    yield log
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    refused = log.read_text().strip()
    assert not refused, "traffic off this machine during the tests:\n" + refused[:2000]


TOOLS_OWN = {".git", ".venv", ".pytest_cache", "__pycache__"}  # what git, pip, pytest and Python keep there


def _checkout_paths() -> set[str]:
    found = set()
    for folder, dirs, files in os.walk(ROOT):
        rel = Path(folder).relative_to(ROOT)
        dirs[:] = [d for d in dirs if d not in TOOLS_OWN and (rel / d).as_posix() != ".dvc/tmp"]
        found.update((rel / name).as_posix() for name in dirs + files)
    return found


@pytest.fixture(autouse=True, scope="session")
def checkout_untouched():
    """Tests write only under their temporary folders: a user who runs the suite in the checkout that holds
    their runs (mlflow.db, mlruns/, data/) must find it as before. Fails at the end with what appeared."""
    before = _checkout_paths()
    yield
    new = sorted(_checkout_paths() - before)
    assert not new, f"the tests wrote into the checkout {ROOT}: " + ", ".join(new[:20])


@pytest.fixture
def silent_server():
    """An MLflow 'server' that accepts connections on 127.0.0.1 and never answers: its `url`, and
    `accepted`, the `time.perf_counter()` of each connection it took. The connections are held until
    the test ends, then everything is closed."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    held, accepted, stop = [], [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                accepted.append(time.perf_counter())
                held.append(conn)  # read nothing, answer nothing
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{srv.getsockname()[1]}", accepted=accepted)
    stop.set()
    thread.join(timeout=2)
    for conn in held:
        conn.close()
    srv.close()


@pytest.fixture(autouse=True, scope="session")
def mlflow_store(tmp_path_factory):
    """Every test logs to a throw-away sqlite store, never to the repo's mlflow.db."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{path}"
    os.environ["CEM_FIDELITY_CACHE"] = str(tmp_path_factory.mktemp("fidelity"))
    yield path
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def tiny_params(tmp: Path, source: Path | str, **sections) -> dict:
    """A complete, tiny params mapping whose outputs all live under `tmp`."""
    train_common = {
        "arch": TINY_ARCH, "checkpoint_every": 2,
        "optim": {"epochs": 2.0, "batch_size": 50, "lr": 0.05, "schedule": "triangle"},
        "eval": {"every_steps": 2, "epoch_per_class": 2, "epoch_attack_steps": 2, "batch_size": 100},
        "runtime": {"threads": 1, "amp": False},  # fp32 on every CPU kind (tests/test_runtime.py covers bf16)
    }
    raw = {
        "experiment": "tests",
        "metrics_dir": str(tmp / "metrics"),
        "data": {"source": str(source), "out_dir": str(tmp / "data")},
        "train_sup": {**train_common, "out_dir": str(tmp / "sup"), "augment": True,
                      "optim": {"epochs": 10.0, "batch_size": 50, "lr": 0.1, "schedule": "triangle"},
                      "attack": {"norm": "l2", "eps": 0.5, "steps": 2}},
        "train_ref": {**train_common, "out_dir": str(tmp / "ref"), "augment": True,
                      "optim": {"epochs": 10.0, "batch_size": 50, "lr": 0.1, "schedule": "triangle"},
                      "attack": {"eps": 0.0, "steps": 0}},
        "train_unsup": {**train_common, "out_dir": str(tmp / "unsup"),
                        "probe": {"epochs": 2, "train_per_class": 10}},
        "evaluate": {name: {"test_per_class": 5, "attack_steps": 3 if name != "ref" else 0, "batch_size": 100,
                            "runtime": {"threads": 1, "amp": False}} for name in ("sup", "ref", "unsup")},
        "sample": {"out_dir": str(tmp / "samples"), "runtime": {"amp": False, "channels_last": False},
                   "defaults": {"n": 20, "batch_size": 10, "shard_size": 10, "steps": 3, "step_size": 0.5,
                                "eps": 30.0, "noise_std": 0.0, "seed": 0},
                   **{name: {"bank_size": 100} for name in ("pgd_uncond", "maxent_uncond", "pgd_cond", "maxent_cond",
                                                                 "maxent_pca_momentum")},
                   "controls": {"n": 10, "steps": 2}},
        "score": {"out_dir": str(tmp / "scores"), "judge": str(tmp / "ref" / "model.pt"),
                  "reference_dir": str(tmp / "refstats"), "kid_subset_size": 10, "inception": False},
        "report": {"out": str(tmp / "reports" / "results.md")},
    }
    for key, value in sections.items():
        raw[key] = _merge(raw.get(key, {}), value) if isinstance(value, dict) else value
    return raw


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_params(tmp: Path, raw: dict) -> Path:
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cem(*args: str, cwd: Path | None = None, check: bool = True, env: dict | None = None,
        timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real `cem` command in a subprocess (as users and DVC do)."""
    full_env = {**os.environ, "CI": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "stages.cli", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"cem {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, image_folder) -> tuple[Path, dict]:
    """Synthetic data prepared once: (tmp folder, raw params)."""
    tmp = tmp_path_factory.mktemp("prepared")
    raw = tiny_params(tmp, image_folder)
    params = write_params(tmp, raw)
    cem("prepare", "--params", str(params))
    return tmp, raw


@pytest.fixture(scope="session")
def trained(prepared) -> tuple[Path, dict]:
    """The three tiny models trained once (supervised AT, reference, contrastive AT)."""
    tmp, raw = prepared
    params = tmp / "params.yaml"
    for kind in ("supervised", "reference", "unsupervised"):
        cem("train", kind, "--params", str(params))
    return tmp, raw
