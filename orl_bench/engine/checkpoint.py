"""Checkpoint artifacts (docs/plugins.md).

A pretraining artifact folder holds `train_state.pt` (everything needed to resume), and once
training is complete `backbone.safetensors` (torchvision ResNet key names) and `manifest.json`.
The manifest is written last, so its presence marks a complete artifact.

Everything but the sidecars (SIDECARS: the training logs, `run.json` with dates, durations and
the host, a lock) depends only on the artifact's inputs: the same config and inputs give the same
bytes, however often the run was interrupted and in whichever work directory it ran.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from orl_bench.config import config_hash, dump_yaml
from orl_bench.io import atomic_write, atomic_write_json, atomic_write_text, sha256_file
from orl_bench.models.backbones import ResNet, build_backbone

MANIFEST = "manifest.json"
BACKBONE = "backbone.safetensors"
TRAIN_STATE = "train_state.pt"
RUN_INFO = "run.json"  # how this copy was built: dates, durations, device, threads
SIDECARS = (RUN_INFO, "log.jsonl", "tensorboard", "build.lock")
MANIFEST_VERSION = 1


class CheckpointError(ValueError):
    pass


def write_config(artifact_dir: Path, cfg: Any) -> None:
    """The resolved config beside the artifact, with its hash on the first line."""
    atomic_write_text(Path(artifact_dir) / "config.yaml", f"# config_hash: {config_hash(cfg)}\n{dump_yaml(cfg)}")


def save_torch(path: Path, obj: Any) -> None:
    """torch.save, atomically and byte-reproducibly."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: given a name, torch.save records the (random) temp name
            torch.save(obj, f)
    atomic_write(path, write)



def load_train_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def read_run_info(artifact_dir: Path) -> dict[str, Any]:
    """The sidecar of a complete artifact ({} for one made before sidecars existed)."""
    path = Path(artifact_dir) / RUN_INFO
    return json.loads(path.read_text()) if path.is_file() else {}


def pretraining_seconds(artifact_dir: Path) -> float | None:
    """The wall time an artifact's build spent: its training (or last stage), plus the earlier
    stages built in the same run (their top-level `*_s` durations; a reused stage counts 0). A
    build killed and resumed counts its last process only; None where the artifact kept no timing
    (copied without its run.json)."""
    # artifacts made before run.json kept it in the manifest
    info = read_run_info(artifact_dir) or read_manifest(artifact_dir)
    if "train_wall_s_this_run" not in info and "started" not in info:  # a random init's run.json has no training
        return None
    stages = info.get("stages", {})
    earlier = [v for entry in (stages, *(e for e in stages.values() if isinstance(e, dict)))
               for k, v in entry.items() if k.endswith("_s") and isinstance(v, (int, float))]
    return float(info.get("train_wall_s_this_run", 0)) + sum(earlier)


def is_complete(artifact_dir: Path) -> bool:
    return (Path(artifact_dir) / MANIFEST).is_file()


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    path = Path(artifact_dir) / MANIFEST
    if not Path(artifact_dir).is_dir():
        raise CheckpointError(f"artifact {artifact_dir} is not a folder; expected an orl-bench artifact folder "
                              f"(with {MANIFEST} and {BACKBONE}); a state-dict file goes to --checkpoint")
    if not path.is_file():
        raise CheckpointError(f"{artifact_dir} is not a complete artifact (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is damaged ({e}); expected the JSON manifest orl-bench writes") from e
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path} is not an orl-bench manifest (a JSON object)")
    return manifest


def export_artifact(artifact_dir: Path, backbone: ResNet, manifest: dict[str, Any],
                    run_info: dict[str, Any]) -> dict[str, Any]:
    """Write run.json (the sidecar), backbone.safetensors, then manifest.json (with the weights'
    sha256) last."""
    artifact_dir = Path(artifact_dir)
    atomic_write_json(artifact_dir / RUN_INFO, run_info)
    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    atomic_write(artifact_dir / BACKBONE, lambda tmp: save_file(tensors, str(tmp)))
    full = {"format_version": MANIFEST_VERSION, **manifest,
            "backbone_sha256": sha256_file(artifact_dir / BACKBONE)}
    atomic_write_json(artifact_dir / MANIFEST, full)
    return full


def check_keys(state: dict[str, torch.Tensor], model: torch.nn.Module, source: str) -> dict[str, torch.Tensor]:
    """Strict match against the model's keys and shapes. BatchNorm's `num_batches_tracked` may be
    absent (detectron2 and others keep none): BatchNorm loads without it, even strictly."""
    expected = model.state_dict()
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith(".num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                parts.append(f"{label} keys ({len(keys)}): {', '.join(keys[:20])}"
                             + (" ..." if len(keys) > 20 else ""))
        raise CheckpointError(f"{source} does not match the {type(model).__name__} backbone: " + "; ".join(parts))
    return state


def load_backbone(artifact_dir: Path) -> tuple[ResNet, dict[str, Any]]:
    """Rebuild the backbone an artifact describes and load its weights strictly."""
    manifest = read_manifest(artifact_dir)
    path = Path(artifact_dir) / BACKBONE
    if sha256_file(path) != manifest["backbone_sha256"]:
        raise CheckpointError(f"{path} does not match the sha256 in its manifest (modified or corrupt)")
    model = build_backbone(manifest["arch"], manifest["width"])
    model.load_state_dict(check_keys(load_file(str(path)), model, str(path)))
    return model, manifest
