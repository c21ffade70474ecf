"""Model kinds (pipeline/model_kinds.py): every sampler draws from a registered kind, a model file of an
unknown kind is one line, and a new kind and a new sampler each work by registration alone."""
import pytest
import torch
from torch import nn

from pipeline import model_kinds
from pipeline.errors import CemError
from pipeline.files import atomic_torch_save
from pipeline.model_kinds import MODEL_KINDS
from pipeline.params import ResolvedSamplerParams, UNREAD_KNOB_VALUES, _default_sampler_section
from pipeline.sampler_specs import SPECS, spec
from pipeline.samplers import SAMPLERS, objective
from pipeline.sampling import load_shards, model_path_for, run_sampling


def test_every_sampler_draws_from_a_registered_kind_and_unknown_kinds_are_refused(tmp_path):
    assert {s.model_kind for s in SPECS.values()} <= set(MODEL_KINDS)
    assert MODEL_KINDS["classifier"].can_judge and not MODEL_KINDS["contrastive"].can_judge
    with pytest.raises(ValueError, match="unregistered model kind 'alien'"):
        spec("alien_sampler", "alien", True, "", "?", None, None)
    from pipeline.checkpoints import build_trained_model
    with pytest.raises(CemError, match="model file: unknown model kind 'alien'; registered: classifier, contrastive"):
        build_trained_model({"kind": "alien", "arch": {}, "state_dict": {}})


def test_the_model_file_a_sampler_reads_comes_from_its_kinds_section():
    from pipeline.params import Params
    p = Params()
    assert model_path_for(p, "rcs").parent.as_posix() == p.train_sup.out_dir
    assert model_path_for(p, "maxent_cond").parent.as_posix() == p.train_unsup.out_dir


class Brightness(nn.Module):
    """A toy 'model': logits that say how bright each colour channel is (3 classes)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x.mean(dim=(2, 3)) * self.scale


def test_a_new_model_kind_and_a_new_sampler_work_by_registration_alone(prepared, tmp_path):
    """The toy kind is one `kind(...)` call, the toy sampler one `spec(...)` and one `@objective`; the
    sample stage's code then draws from it unchanged (seeds, batches, shards, controls, grid)."""
    tmp, _ = prepared
    model_kinds.kind("toy_brightness", "toy", None,
                     lambda blob: model_kinds._load(Brightness(), blob, "the toy model"))
    spec("toy_redder", "toy_brightness", False, "mean red − mean green − mean blue", "Redder (toy)", None, None)
    try:
        @objective("toy_redder")
        def _redder(ctx, _c):
            return lambda x: ctx.model(x) @ torch.tensor([1.0, -1.0, -1.0])

        model = tmp_path / "toy.pt"
        atomic_torch_save({"kind": "toy_brightness", "arch": {}, "num_classes": 3,
                           "state_dict": Brightness().state_dict()}, model)
        rp = ResolvedSamplerParams(**{**UNREAD_KNOB_VALUES, **_default_sampler_section().model_dump(),
                                      "n": 20, "batch_size": 10, "shard_size": 10, "steps": 20, "step_size": 2.0})
        stats = run_sampling("toy_redder", rp, model, str(tmp / "data"), tmp_path / "out", torch.device("cpu"))
        assert stats["n"] == 20 and stats["objective_last_step_mean"] > stats["objective_first_step_mean"]
        images = torch.cat([i for i, _ in load_shards(tmp_path / "out")]).float()
        assert images[:, 0].mean() > images[:, 1].mean() + 60  # the ascent made the samples red
    finally:
        SPECS.pop("toy_redder", None)
        SAMPLERS.pop("toy_redder", None)
        MODEL_KINDS.pop("toy_brightness", None)
