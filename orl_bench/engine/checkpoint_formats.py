"""ResNet checkpoints as other code bases save them (README, "Checkpoints from other code").

A `Format` says where a file keeps its state dict (`where`: the keys from the file's top level),
under which key prefix the ResNet backbone sits in it, and which modules under that prefix are not
backbone (a classifier or projector in its `fc`). Loading takes the first format that finds a
ResNet, renames its keys to torchvision's, lists everything else as dropped (heads, projectors,
predictors, momentum copies, queues, optimiser state), infers depth and width from the weights
and loads strictly: a backbone key that is missing, unexpected or of the wrong shape is an error
naming it. Adding a format is one entry in FORMATS.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.serialization
from safetensors.torch import load_file
from torchvision.models.resnet import Bottleneck

from orl_bench.engine.checkpoint import CheckpointError, check_keys
from orl_bench.engine.export import torchvision_name
from orl_bench.io import sha256_file
from orl_bench.models.backbones import ARCHS, ResNet, build_backbone

LIGHTNING = "pytorch-lightning_version"  # a top-level key of every PyTorch Lightning checkpoint
# A torchvision ResNet's children in order: the indices nn.Sequential(*resnet.children()) names keys by.
RESNET_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _same(key: str) -> str:
    return key


def _always(top: dict, state: dict) -> bool:
    return True


def _sequential_names(key: str) -> str:
    """`4.0.conv1.weight` -> `layer1.0.conv1.weight`."""
    index, dot, rest = key.partition(".")
    return RESNET_CHILDREN[int(index)] + dot + rest if index.isdigit() and int(index) < len(RESNET_CHILDREN) else key


@dataclass(frozen=True)
class Format:
    name: str
    source: str  # whose files have this layout
    where: tuple[str, ...]  # keys from the file's top level to the state dict
    prefixes: tuple[str, ...]  # the backbone's key prefix in the state dict, the first that holds one; () finds it
    chosen: str  # which network of the file is the backbone; of two, the one its code base publishes, and why
    heads: tuple[str, ...] = ()  # modules under the prefix that are not backbone
    rename: Callable[[str], str] = _same  # a key after the prefix -> torchvision's name
    applies: Callable[[dict, dict], bool] = _always  # tells formats of one layout apart: (file, state dict) -> bool


FORMATS = (
    Format("torchvision", "torchvision and timm ResNets (timm keeps torchvision's names), or any backbone-only file",
           (), ("",), "the whole file", heads=("fc",)),
    Format("openselfsup-extracted", "OpenSelfSup's tools/extract_backbone_weights.py: the weights ORL and DenseCL "
           "publish", ("state_dict",), ("",), "the whole state dict (the extracted backbone)"),
    Format("moco", "facebookresearch/moco main_moco.py (MoCo v1/v2, DDP)", ("state_dict",), ("module.encoder_q.",),
           "the query encoder, what MoCo's main_lincls.py and convert-pretrain-to-detectron2.py take "
           "(encoder_k is its momentum copy)", heads=("fc",)),
    Format("mocov3", "facebookresearch/moco-v3 main_moco.py (DDP)", ("state_dict",), ("module.base_encoder.",),
           "the base encoder, what MoCo v3's main_lincls.py takes (momentum_encoder is its momentum copy)",
           heads=("fc",)),
    Format("solo-learn", "solo-learn (a PyTorch Lightning checkpoint)", ("state_dict",), ("backbone.",),
           "backbone, the online network (DINO's student), what solo-learn's main_linear.py loads "
           "(momentum_backbone is its momentum copy)",
           applies=lambda top, state: LIGHTNING in top and "classifier.weight" in state),
    Format("lightning", "PyTorch Lightning, for any LightningModule", ("state_dict",), (),
           "the one ResNet in the LightningModule", applies=lambda top, state: LIGHTNING in top),
    Format("openselfsup", "OpenSelfSup and mmselfsup (the official ORL and DenseCL code): mmcv/mmengine checkpoints",
           ("state_dict",), ("backbone.",), "backbone, the online network (BYOL, ORL) or query encoder (MoCo, "
           "DenseCL), what tools/extract_backbone_weights.py publishes (target_net, encoder_k: momentum copies)"),
    Format("vissl", "VISSL (classy_state_dict)", ("classy_state_dict", "base_model", "model", "trunk"),
           ("_feature_blocks.",), "the trunk, what VISSL's convert_vissl_to_torchvision.py takes"),
    Format("dino", "facebookresearch/dino main_dino.py", ("teacher",), ("module.backbone.", "backbone."),
           "the teacher, what DINO evaluates and publishes (eval_linear.py --checkpoint_key teacher)"),
    Format("byol-pytorch", "lucidrains/byol-pytorch (the BYOL learner's state dict)", (), ("online_encoder.net.",),
           "the online encoder (target_encoder is its momentum copy, net the same tensors)", heads=("fc",)),
    Format("pytorch-byol", "sthalles/PyTorch-BYOL trainer.py", ("online_network_state_dict",), ("encoder.",),
           "the online network (target_network is its momentum copy)", rename=_sequential_names),
    Format("detectron2", "convert-pretrain-to-detectron2.py of MoCo and OpenSelfSup (DenseCL), and orl-bench export "
           "(detectron2's .pkl of numpy arrays)", ("model",), ("",), "the whole model", heads=("fc",),
           rename=torchvision_name),
)


class _Unneeded:
    """Stands in for a class the weights-only loader refuses (a training config, a logger's
    state): its data is not needed, and none of the file's code runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _NumpyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else (what a detectron2 .pkl holds), running none of the file's code."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               *((f"numpy.{core}.{module}", name) for core in ("core", "_core")  # numpy 1 and 2
                 for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                                      ("numeric", "_frombuffer")))}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a numpy array")
        return super().find_class(module, name)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):  # only torch.save's zip format lists its classes
            raise
        # Training scripts pickle their configs (argparse, omegaconf, mmengine) beside the weights.
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        with torch.serialization.safe_globals([(_Unneeded, name) for name in names]):
            return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint_file(path: Path) -> Any:
    """A checkpoint file's contents: safetensors, a detectron2 .pkl, else torch.save's format."""
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; expected a checkpoint file (.pth, .pt, .pkl or "
                              ".safetensors); an orl-bench artifact folder goes to --artifact")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    kind = {".safetensors": "safetensors", ".pkl": "detectron2 .pkl"}.get(path.suffix, "PyTorch")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        if path.suffix == ".pkl":
            with open(path, "rb") as f:
                return _NumpyUnpickler(f, encoding="latin1").load()  # latin1: Python 2 pickles too
        return _torch_load(path)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - unpicklers fail on foreign bytes with any error (KeyError, ...)
        raise CheckpointError(f"{path} is not a {kind} checkpoint ({type(e).__name__}: "
                              f"{(str(e).strip().splitlines() or [''])[0][:200]}); expected a ResNet checkpoint "
                              "saved with torch.save, safetensors or pickle (detectron2)") from e


def _tensor_count(obj: Any) -> int:
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return 1
    if isinstance(obj, dict):
        return sum(map(_tensor_count, obj.values()))
    return sum(map(_tensor_count, obj)) if isinstance(obj, (list, tuple)) else 0


def _module_of(key: str, prefix: str) -> str:
    """The module a dropped key belongs to: its path as far as it follows the backbone's prefix,
    and one name more (`module.encoder_k` beside `module.encoder_q.`, `neck` beside `backbone.`)."""
    parts, along = key.split("."), prefix.split(".")[:-1]
    n = 0
    while n < min(len(parts) - 1, len(along)) and parts[n] == along[n]:
        n += 1
    return ".".join(parts[:n + 1])


@dataclass
class Found:
    format: Format
    prefix: str  # the backbone's key prefix in the state dict
    backbone: dict[str, torch.Tensor]  # under torchvision's names
    dropped: dict[str, int]  # module or entry of the file -> the tensors it holds


def _resnet_prefixes(state: dict, fmt: Format, path: Path) -> list[str]:
    """The prefix of the one ResNet in a state dict of unknown layout (none: [])."""
    found = sorted(k.removesuffix("conv1.weight") for k in state if k.endswith("conv1.weight")
                   and f"{k.removesuffix('conv1.weight')}layer1.0.conv1.weight" in state)
    if len(found) > 1:
        raise CheckpointError(f"{path} ({fmt.name}) holds {len(found)} ResNets, under {', '.join(found)}; expected "
                              "one: save the backbone's own state_dict()")
    return found


def _find(fmt: Format, top: dict, path: Path) -> Found | None:
    levels = [top]  # the dicts along `where`: their other entries are dropped
    for key in fmt.where:
        levels.append(levels[-1].get(key) if isinstance(levels[-1], dict) else None)
    state = levels.pop()
    if not isinstance(state, dict) or not fmt.applies(top, state):
        return None
    for prefix in fmt.prefixes or _resnet_prefixes(state, fmt, path):
        ours = {fmt.rename(k.removeprefix(prefix)): k for k in state if isinstance(k, str) and k.startswith(prefix)}
        if "conv1.weight" not in ours:
            continue
        heads, read = [k for k in ours if k.split(".")[0] in fmt.heads], set(ours.values())
        dropped = Counter(_module_of(str(k), prefix) for k in state if k not in read)
        dropped.update(prefix + k.split(".")[0] for k in heads)
        for depth, level in enumerate(levels):
            for k, v in level.items():
                if k != fmt.where[depth]:
                    dropped[".".join((*fmt.where[:depth], str(k)))] += _tensor_count(v)
        backbone = {k: torch.as_tensor(state[ours[k]]) for k in ours if k not in heads}
        return Found(fmt, prefix, backbone, dict(dropped))
    return None


def infer_arch(backbone: dict[str, torch.Tensor], source: str = "the weights") -> tuple[str, int]:
    """(arch, width) from the weights: blocks per stage and block type give the depth, the stem's
    output channels the width."""
    blocks = [len({m[1] for k in backbone if (m := re.match(rf"layer{n}\.(\d+)\.", k))}) for n in range(1, 5)]
    bottleneck = any(re.match(r"layer\d\.\d+\.conv3\.", k) for k in backbone)
    for arch, (block, layers) in ARCHS.items():
        if layers == blocks and (block is Bottleneck) == bottleneck:
            return arch, int(backbone["conv1.weight"].shape[0])
    known = "; ".join(f"{a} {layers} {block.__name__}" for a, (block, layers) in ARCHS.items())
    raise CheckpointError(f"{source}: a ResNet of {blocks} {'Bottleneck' if bottleneck else 'BasicBlock'} blocks "
                          f"per stage, none of those orl-bench builds ({known})")


@dataclass
class Checkpoint:
    """A checkpoint file's ResNet backbone, loaded, and what was read to get it."""
    path: Path
    backbone: ResNet
    format: Format
    arch: str
    width: int
    prefix: str  # the backbone's key prefix in the file's state dict
    kept: int  # tensors loaded into the backbone
    dropped: dict[str, int]  # module or entry of the file -> the tensors it holds
    sha256: str


def load_checkpoint(path: Path, arch: str | None = None, width: int | None = None) -> Checkpoint:
    """The ResNet backbone of a checkpoint file in any of FORMATS, loaded strictly; `arch` and
    `width`, where given, must agree with the weights."""
    path = Path(path)
    top = read_checkpoint_file(path)
    if not isinstance(top, dict):
        kind = "pickled Python object" if isinstance(top, _Unneeded) else type(top).__name__
        raise CheckpointError(f"{path} holds a {kind}, not a dict of weights; expected a state dict "
                              "(torch.save(model.state_dict()), not torch.save(model))")
    found = next(filter(None, (_find(fmt, top, path) for fmt in FORMATS)), None)
    if found is None:
        keys = [str(k) for k in top]
        raise CheckpointError(f"{path} holds no ResNet backbone in any layout orl-bench reads "
                              f"({', '.join(f.name for f in FORMATS)}); its top-level keys ({len(keys)}): "
                              + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
    where = f"{path} ({found.format.name}, backbone under '{found.prefix}')"
    inferred = infer_arch(found.backbone, where)
    for option, given, read in (("--arch", arch, inferred[0]), ("--width", width, inferred[1])):
        if given is not None and given != read:
            raise CheckpointError(f"{option} {given} disagrees with the weights of {path}: a {inferred[0]} of "
                                  f"width {inferred[1]} ({found.format.name}); leave {option} out to take it from them")
    model = build_backbone(*inferred)
    model.load_state_dict(check_keys(found.backbone, model, where))
    return Checkpoint(path, model, found.format, *inferred, found.prefix, len(found.backbone), found.dropped,
                      sha256_file(path))


def summary(ckpt: Checkpoint) -> str:
    """One line on what was read, for `run` and `eval`."""
    return (f"checkpoint: {ckpt.format.name}, {ckpt.arch} of width {ckpt.width}; the backbone is "
            f"{ckpt.format.chosen}; dropped {', '.join(ckpt.dropped) or 'nothing'}")


def describe(ckpt: Checkpoint) -> str:
    """`orl-bench inspect`: the format, the network, what was kept and dropped, the record's sha256."""
    lines = [f"file: {ckpt.path}",
             f"format: {ckpt.format.name}, as saved by {ckpt.format.source}",
             f"arch: {ckpt.arch}, width {ckpt.width}",
             f"kept: {ckpt.kept} tensors" + (f" under '{ckpt.prefix}'" if ckpt.prefix else "")
             + (f" in {'.'.join(ckpt.format.where)}" if ckpt.format.where else "") + f": {ckpt.format.chosen}",
             f"dropped: {len(ckpt.dropped)} entries, {sum(ckpt.dropped.values())} tensors"]
    lines += [f"  {name}" + (f" ({n} tensor{'s' * (n != 1)})" if n else "") for name, n in ckpt.dropped.items()]
    return "\n".join([*lines, f"sha256: {ckpt.sha256}"]) + "\n"
