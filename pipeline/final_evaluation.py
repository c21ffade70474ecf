"""The final evaluation of a trained model (`cem evaluate NAME`, DVC stage evaluate@NAME).

Apart from training so that changing how a model is measured (more PGD steps, AutoAttack on more
images) never retrains it, and so that on a GPU the measuring runs beside the samplers. The threat
model comes from the model file (what its training section's eval_attack was), the sizes and the seed
from `evaluate.NAME`; the network is what the model kind says classifies test images (the encoder
with its linear probe, for a contrastive model).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from .data import Dataset, stratified_indices
from .errors import CemError
from .evaluation import EVAL_SEED, evaluate, predict, to_float
from .params import EvalAttackParams, FinalEvalParams
from .progress import progress_bar
from .runtime import amp_decision
from .timing import phase


def autoattack_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: EvalAttackParams,
                        batch_size: int, device: torch.device, num_classes: int, seed: int = EVAL_SEED,
                        advance=None) -> float:
    """Robust accuracy (%) under AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square), the
    field's reported number (RobustBench); torchattacks' implementation (a maintained package, already
    our cross-check of PGD), seeded, fp32. Our models normalise inside and take [0,1] inputs."""
    import copy

    import torchattacks
    # torchattacks' FAB reshapes input gradients with .view(), which fails on channels_last tensors:
    # attack a contiguous-format copy of the network with contiguous inputs.
    net = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
    norm = {"l2": "L2", "linf": "Linf"}[attack.norm]
    aa = torchattacks.AutoAttack(net, norm=norm, eps=attack.eps, version="standard", n_classes=num_classes,
                                 seed=seed)
    correct = 0
    for i in range(0, len(labels), batch_size):
        x = to_float(images[i:i + batch_size], device, False)
        y = labels[i:i + batch_size].to(device)
        correct += (predict(net, aa(x, y)) == y).sum().item()
        if advance is not None:
            advance(len(y))
    return 100.0 * correct / len(labels)


def threat_model(blob: dict, path: Path) -> EvalAttackParams:
    """The threat model a model file records (its training section's eval_attack)."""
    raw = blob.get("threat_model")
    if not isinstance(raw, dict):
        raise CemError(f"{path} records no threat model (written before `cem evaluate` existed); "
                       "retrain it (dvc repro)")
    try:
        return EvalAttackParams(**raw)
    except Exception:
        raise CemError(f"{path}: its threat model record is not valid ({sorted(raw)})") from None


def network(blob: dict, device: torch.device, channels_last: bool):
    from .model_kinds import require_kind
    net = require_kind(blob["kind"], "model file").classifier(blob).to(device)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def evaluate_model(blob: dict, path: Path, data: Dataset, fp: FinalEvalParams, device: torch.device,
                   label: str) -> dict:
    """Clean and PGD-`attack_steps` accuracy (%) on `test_per_class` images per class, and with
    `autoattack`, AutoAttack and PGD on the same stratified subset of those. Seconds per part
    included (the GPU budget is planned from them)."""
    attack = threat_model(blob, path)
    if len(data.classes) != blob.get("num_classes", len(data.classes)):
        raise CemError(f"{path} classifies {blob['num_classes']} classes, the data has {len(data.classes)}")
    attacked = attack.eps > 0 and fp.attack_steps > 0
    if fp.autoattack and not attacked:
        raise CemError(f"evaluate.{label}.autoattack is on but there is no attack to run "
                       f"(threat model eps {attack.eps}, attack_steps {fp.attack_steps})")
    # bf16 where the attack runs (as in training); a model measured without an attack (the judge) in fp32
    amp = attacked and amp_decision(fp.runtime, device)[0]
    cl = fp.runtime.channels_last
    net = network(blob, device, cl)
    idx = stratified_indices(data.test.labels, fp.test_per_class, EVAL_SEED)
    out: dict = {"eval_images": len(idx), "threat_model": describe(attack, fp.attack_steps if attacked else 0),
                 "bf16": amp}
    t0 = time.perf_counter()
    with phase("eval"), progress_bar(f"evaluate {label}: clean" + (f" + PGD-{fp.attack_steps}" if attacked else ""),
                      len(idx)) as advance:
        out.update(evaluate(net, data.test.images[idx], data.test.labels[idx], attack, fp.attack_steps,
                            fp.batch_size, device, cl, amp, seed=fp.seed, advance=advance))
    out["eval_seconds"] = round(time.perf_counter() - t0, 1)
    if fp.autoattack:
        sub = idx[stratified_indices(data.test.labels[idx], fp.autoattack_per_class, EVAL_SEED)]
        x, y = data.test.images[sub], data.test.labels[sub]
        with phase("eval"):
            same = evaluate(net, x, y, attack, fp.attack_steps, fp.batch_size, device, cl, amp, seed=fp.seed)
        t0 = time.perf_counter()
        with phase("autoattack"), progress_bar(f"evaluate {label}: AutoAttack", len(sub)) as advance:
            acc = autoattack_accuracy(net, x, y, attack, fp.batch_size, device, len(data.classes), seed=fp.seed,
                                      advance=advance)
        out.update({"autoattack_acc": acc, "pgd_acc_on_autoattack_images": same.get("robust_acc"),
                    "autoattack_images": len(sub), "autoattack_seconds": round(time.perf_counter() - t0, 1)})
    return out


def describe(attack: EvalAttackParams, steps: int) -> str:
    """'l2 eps=0.5 PGD-20' (the report's attack column); 'none' for a clean-only evaluation."""
    return f"{attack.norm} eps={attack.eps:.4g} PGD-{steps}" if steps > 0 and attack.eps > 0 else "none (clean only)"
