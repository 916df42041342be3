"""Reading other code bases' checkpoints: each layout is built here from the key names of its
source's public code (cited per layout) with random weights, saved in the source's container,
and read back; the backbone must equal the source's tensors, the heads and momentum copies must
be listed as dropped, and a file of two backbones must give the one its code base publishes."""
import argparse
import json
import os
import pickle
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from orl_bench.engine.checkpoint import CheckpointError
from orl_bench.engine.checkpoint_formats import FORMATS, infer_arch, load_checkpoint
from orl_bench.engine.export import save_detectron2
from orl_bench.io import sha256_file
from orl_bench.models.backbones import ARCHS, build_backbone
from orl_bench.results.records import records_path
from tests.conftest import run_main

ARCH, WIDTH, FEATURES = "resnet18", 16, 128  # FEATURES: resnet18's pooled features at width 16


class DictConfig:
    """A training config pickled beside the weights (omegaconf's in solo-learn, mmengine's state):
    a class torch's weights-only loader refuses."""

    def __init__(self, values):
        self.values = values


def resnet_state(seed, arch=ARCH, width=WIDTH):
    """A backbone state with every tensor random (BN statistics and counters too), so a swapped
    or default-initialised tensor cannot pass."""
    torch.manual_seed(seed)
    return {k: torch.randint(0, 9, v.shape) if v.dtype == torch.long else torch.randn(v.shape)
            for k, v in build_backbone(arch, width).state_dict().items()}


def prefixed(prefix, state):
    return {prefix + k: v for k, v in state.items()}


def mlp(prefix, dims=(FEATURES, 32, 8)):
    """An MLP head as nn.Sequential(Linear, ReLU, Linear) names it."""
    return {f"{prefix}{2 * i}.{p}": torch.randn(o, i_) if p == "weight" else torch.randn(o)
            for i, (i_, o) in enumerate(zip(dims, dims[1:])) for p in ("weight", "bias")}


def sequential_names(state):
    """torchvision names -> nn.Sequential(*list(resnet.children())[:-1])'s (sthalles/PyTorch-BYOL)."""
    index = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
    return {f"{index[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in state.items()}


def moco_detectron2_names(state):
    """facebookresearch/moco detection/convert-pretrain-to-detectron2.py, its string rules restated."""
    out = {}
    for k, v in state.items():
        if "layer" not in k:
            k = "stem." + k
        for t in (1, 2, 3, 4):
            k = k.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            k = k.replace(f"bn{t}", f"conv{t}.norm")
        out[k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")] = v.numpy()
    return out


# name -> (format, file suffix, build(backbone state, another backbone state) -> file contents,
#          entries that must be listed as dropped)
LAYOUTS = {
    # torchvision.models.resnet18().state_dict(); timm's ResNet has the same names
    "torchvision": ("torchvision", ".pth", lambda s, o: {**s, "fc.weight": torch.randn(10, FEATURES),
                                                          "fc.bias": torch.randn(10)}, {"fc"}),
    "timm safetensors": ("torchvision", ".safetensors", lambda s, o: {**s, "fc.weight": torch.randn(10, FEATURES),
                                                                       "fc.bias": torch.randn(10)}, {"fc"}),
    # OpenSelfSup tools/extract_backbone_weights.py: dict(state_dict=..., author="OpenSelfSup")
    "openselfsup extracted (ORL, DenseCL releases)": (
        "openselfsup-extracted", ".pth", lambda s, o: {"state_dict": s, "author": "OpenSelfSup"}, {"author"}),
    # moco/main_moco.py save_checkpoint; moco/builder.py: encoder_q/encoder_k (fc an MLP with --mlp),
    # queue and queue_ptr buffers; DistributedDataParallel's module. prefix
    "moco v2": ("moco", ".pth.tar", lambda s, o: {
        "epoch": 200, "arch": "resnet50", "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "params": [0]}]},
        "state_dict": {**prefixed("module.encoder_q.", s), **mlp("module.encoder_q.fc."),
                       **prefixed("module.encoder_k.", o), **mlp("module.encoder_k.fc."),
                       "module.queue": torch.randn(8, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}},
        {"module.encoder_q.fc", "module.encoder_k", "module.queue", "module.queue_ptr", "optimizer", "epoch"}),
    # moco-v3/main_moco.py; moco/builder.py MoCo_ResNet: base_encoder (fc the projector),
    # momentum_encoder, predictor
    "moco v3": ("mocov3", ".pth.tar", lambda s, o: {
        "epoch": 100, "arch": "resnet50", "optimizer": {}, "scaler": {},
        "state_dict": {**prefixed("module.base_encoder.", s), **mlp("module.base_encoder.fc."),
                       **prefixed("module.momentum_encoder.", o), **mlp("module.momentum_encoder.fc."),
                       **mlp("module.predictor.", (8, 32, 8))}},
        {"module.base_encoder.fc", "module.momentum_encoder", "module.predictor", "scaler"}),
    # WXinlong/DenseCL openselfsup/models/densecl.py: encoder_q = Sequential(backbone, neck),
    # backbone = encoder_q[0], encoder_k, queue/queue2 and pointers; mmcv save_checkpoint: meta
    "densecl (OpenSelfSup)": ("openselfsup", ".pth", lambda s, o: {
        "meta": {"epoch": 200, "iter": 1000, "mmcv_version": "0.5.0"}, "optimizer": {"state": {}},
        "state_dict": {**prefixed("encoder_q.0.", s), **mlp("encoder_q.1.mlp."), **mlp("encoder_q.1.mlp2."),
                       **prefixed("encoder_k.0.", o), **mlp("encoder_k.1.mlp."), **prefixed("backbone.", s),
                       "queue": torch.randn(8, 64), "queue_ptr": torch.zeros(1, dtype=torch.long),
                       "queue2": torch.randn(8, 64), "queue2_ptr": torch.zeros(1, dtype=torch.long)}},
        {"encoder_q", "encoder_k", "queue", "queue2_ptr", "meta", "optimizer"}),
    # Jiahao000/ORL openselfsup/models/orl.py: online_net/target_net = Sequential(backbone, neck),
    # backbone = online_net[0], three heads with predictors
    "orl (OpenSelfSup)": ("openselfsup", ".pth", lambda s, o: {
        "meta": {"epoch": 800}, "state_dict": {
            **prefixed("online_net.0.", s), **mlp("online_net.1.mlp."), **prefixed("target_net.0.", o),
            **mlp("target_net.1.mlp."), **prefixed("backbone.", s), **mlp("neck.mlp."),
            **mlp("global_head.predictor.mlp.", (8, 32, 8)), **mlp("local_intra_head.predictor.mlp.", (8, 32, 8)),
            **mlp("local_inter_head.predictor.mlp.", (8, 32, 8))}},
        {"online_net", "target_net", "neck", "global_head", "local_inter_head", "meta"}),
    # mmselfsup 1.x MoCoV2: backbone, neck, encoder_k = ExponentialMovingAverage(Sequential(backbone,
    # neck)) (its module and steps), queue; mmengine checkpoints pickle a message hub's objects
    "mmselfsup 1.x moco": ("openselfsup", ".pth", lambda s, o: {
        "meta": {"mmengine_version": "0.7.0", "epoch": 200}, "message_hub": DictConfig({"log_scalars": {}}),
        "state_dict": {**prefixed("backbone.", s), **mlp("neck.mlp."), **prefixed("encoder_k.module.0.", o),
                       "encoder_k.steps": torch.tensor([5]), "queue": torch.randn(8, 64),
                       "queue_ptr": torch.zeros(1, dtype=torch.long)}},
        {"neck", "encoder_k", "queue", "message_hub"}),
    # solo-learn solo/methods/base.py BaseMethod/BaseMomentumMethod (backbone, classifier,
    # momentum_backbone, momentum_classifier) and byol.py (projector, momentum_projector,
    # predictor), saved by Lightning with the omegaconf config among the hyperparameters
    "solo-learn byol": ("solo-learn", ".ckpt", lambda s, o: {
        "epoch": 400, "global_step": 10000, "pytorch-lightning_version": "2.0.2", "loops": {}, "callbacks": {},
        "optimizer_states": [{"state": {0: {"momentum_buffer": torch.randn(3)}}, "param_groups": []}],
        "lr_schedulers": [], "hparams_name": "cfg", "hyper_parameters": {"cfg": DictConfig({"method": "byol"})},
        "state_dict": {**prefixed("backbone.", s), "classifier.weight": torch.randn(10, FEATURES),
                       "classifier.bias": torch.randn(10), **mlp("projector."), **mlp("predictor.", (8, 32, 8)),
                       **prefixed("momentum_backbone.", o), "momentum_classifier.weight": torch.randn(10, FEATURES),
                       **mlp("momentum_projector.")}},
        {"classifier", "projector", "predictor", "momentum_backbone", "optimizer_states", "hyper_parameters"}),
    # PyTorch Lightning's checkpoint of a user's LightningModule with `self.model.encoder` a ResNet
    "lightning": ("lightning", ".ckpt", lambda s, o: {
        "epoch": 10, "global_step": 500, "pytorch-lightning_version": "1.9.0", "optimizer_states": [],
        "lr_schedulers": [], "state_dict": {**prefixed("model.encoder.", s), **mlp("model.head.")}},
        {"model.head", "optimizer_states", "global_step"}),
    # VISSL checkpoint: classy_state_dict.base_model.model.{trunk, heads}; the ResNe(X)t trunk's
    # _feature_blocks ModuleDict (extra_scripts/convert_vissl_to_torchvision.py strips it)
    "vissl": ("vissl", ".torch", lambda s, o: {
        "phase_idx": 199, "iteration": 5000, "train_phase_idx": 199,
        "classy_state_dict": {"base_model": {"model": {"trunk": prefixed("_feature_blocks.", s),
                                                       "heads": mlp("0.clf.")}},
                              "optimizer": {"state": {}}, "loss": {}}},
        {"classy_state_dict.base_model.model.heads", "classy_state_dict.optimizer", "phase_idx"}),
    # facebookresearch/dino main_dino.py save_dict: student and teacher (both DDP for a ResNet, whose
    # BatchNorms make DINO wrap the teacher too), args an argparse.Namespace
    "dino": ("dino", ".pth", lambda s, o: {
        "student": {**prefixed("module.backbone.", o), **mlp("module.head.mlp.")},
        "teacher": {**prefixed("module.backbone.", s), **mlp("module.head.mlp.")},
        "optimizer": {"state": {}}, "epoch": 100, "args": argparse.Namespace(arch="resnet50"),
        "dino_loss": {"center": torch.randn(1, 8)}},
        {"module.head", "student", "args", "dino_loss"}),
    # lucidrains/byol-pytorch BYOL: net, online_encoder = NetWrapper(net) with a lazy projector,
    # online_predictor, target_encoder (its deep copy); the learner's own state_dict()
    "byol-pytorch": ("byol-pytorch", ".pt", lambda s, o: {
        **prefixed("net.", s), **prefixed("online_encoder.net.", s), "online_encoder.net.fc.weight":
            torch.randn(10, FEATURES), "online_encoder.net.fc.bias": torch.randn(10),
        **mlp("online_encoder.projector.net."), **mlp("online_predictor.net.", (8, 32, 8)),
        **prefixed("target_encoder.net.", o), **mlp("target_encoder.projector.net.")},
        {"net", "online_encoder.net.fc", "online_encoder.projector", "online_predictor", "target_encoder"}),
    # sthalles/PyTorch-BYOL trainer.py save_model; models/resnet_base_network.py: encoder =
    # Sequential(*list(resnet.children())[:-1]), projetion = MLPHead (its `net`)
    "pytorch-byol": ("pytorch-byol", ".pth", lambda s, o: {
        "online_network_state_dict": {**prefixed("encoder.", sequential_names(s)), **mlp("projetion.net.")},
        "encoder_state_dict": sequential_names(s),
        "target_network_state_dict": {**prefixed("encoder.", sequential_names(o)), **mlp("projetion.net.")},
        "optimizer_state_dict": {"state": {}}},
        {"projetion", "encoder_state_dict", "target_network_state_dict"}),
    # MoCo's convert-pretrain-to-detectron2.py on a MoCo checkpoint: the query encoder with its fc,
    # num_batches_tracked kept, numpy arrays in a pickle
    "detectron2 (moco convert)": ("detectron2", ".pkl", lambda s, o: {
        "model": moco_detectron2_names({**s, **mlp("fc.")}), "__author__": "MOCO", "matching_heuristics": True},
        {"fc", "__author__", "matching_heuristics"}),
}


def save(contents, path):
    if path.suffix == ".safetensors":
        save_file(contents, str(path))
    elif path.suffix == ".pkl":
        path.write_bytes(pickle.dumps(contents))
    else:
        torch.save(contents, path)


@pytest.fixture(params=list(LAYOUTS))
def layout(request, tmp_path):
    fmt, suffix, build, dropped = LAYOUTS[request.param]
    path = tmp_path / f"checkpoint{suffix}"
    save(build(resnet_state(0), resnet_state(1)), path)
    return path, fmt, dropped


def test_every_format_has_a_layout_built_from_its_source():
    assert {fmt for fmt, *_ in LAYOUTS.values()} == {f.name for f in FORMATS}


def test_the_backbone_is_the_source_s_tensors_and_the_rest_is_listed(layout):
    path, fmt, dropped = layout
    ckpt = load_checkpoint(path)
    assert ckpt.format.name == fmt and (ckpt.arch, ckpt.width) == (ARCH, WIDTH)
    source = resnet_state(0)  # the published network; resnet_state(1) is the momentum copy / student
    loaded = ckpt.backbone.state_dict()
    for k, v in source.items():
        assert torch.equal(loaded[k], v), k
    assert ckpt.kept == len(source)
    assert dropped <= set(ckpt.dropped), set(ckpt.dropped)
    assert ckpt.sha256 == sha256_file(path)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_depth_and_width_come_from_the_weights(arch):
    state = build_backbone(arch, 8).state_dict()
    assert infer_arch(state) == (arch, 8)


def test_a_resnet50_is_recognised_and_loaded(tmp_path):
    state = resnet_state(0, "resnet50", 8)
    torch.save({"state_dict": {**prefixed("module.encoder_q.", state), **mlp("module.encoder_q.fc.", (256, 8))}},
               tmp_path / "moco_r50.pth.tar")
    ckpt = load_checkpoint(tmp_path / "moco_r50.pth.tar")
    assert (ckpt.arch, ckpt.width) == ("resnet50", 8)
    assert all(torch.equal(ckpt.backbone.state_dict()[k], v) for k, v in state.items())


def test_orl_bench_s_own_detectron2_export_reads_back(tmp_path):
    state = resnet_state(0)
    save_detectron2(tmp_path / "export.pkl", state)  # drops num_batches_tracked, as detectron2 keeps none
    ckpt = load_checkpoint(tmp_path / "export.pkl")
    assert ckpt.format.name == "detectron2"
    loaded = ckpt.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.endswith("num_batches_tracked"))


def test_a_file_without_a_resnet_lists_its_top_level_keys(tmp_path):
    torch.save({"model_ema": {"blocks.0.attn.qkv.weight": torch.randn(3, 3)}, "epoch": 3}, tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match=r"no ResNet backbone .*top-level keys \(2\): model_ema, epoch$"):
        load_checkpoint(tmp_path / "vit.pth")


def test_a_missing_backbone_key_is_still_an_error_naming_it(tmp_path):
    state = prefixed("module.encoder_q.", resnet_state(0))
    del state["module.encoder_q.layer4.1.conv2.weight"]
    torch.save({"state_dict": state}, tmp_path / "moco.pth")
    with pytest.raises(CheckpointError, match=r"\(moco, .*missing keys \(1\): layer4\.1\.conv2\.weight$"):
        load_checkpoint(tmp_path / "moco.pth")


def test_arch_and_width_given_must_agree_with_the_weights(tmp_path):
    torch.save(resnet_state(0), tmp_path / "r18.pth")
    assert load_checkpoint(tmp_path / "r18.pth", ARCH, WIDTH).arch == ARCH
    with pytest.raises(CheckpointError, match="--arch resnet50 disagrees with the weights .* resnet18 of width 16"):
        load_checkpoint(tmp_path / "r18.pth", "resnet50")
    with pytest.raises(CheckpointError, match="--width 64 disagrees"):
        load_checkpoint(tmp_path / "r18.pth", width=64)


def test_a_lightning_module_with_two_resnets_names_both(tmp_path):
    torch.save({"pytorch-lightning_version": "2.1.0", "state_dict": {**prefixed("student.", resnet_state(0)),
                                                                     **prefixed("teacher.", resnet_state(1))}},
               tmp_path / "two.ckpt")
    with pytest.raises(CheckpointError, match="holds 2 ResNets, under student., teacher.; expected one"):
        load_checkpoint(tmp_path / "two.ckpt")


class RunsCode:
    def __reduce__(self):
        return os.system, ("touch pwned",)


@pytest.mark.parametrize("name", ["evil.pth", "evil.pkl"])
def test_no_code_in_a_checkpoint_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    contents = {"model": {"stem.conv1.weight": np.zeros(1)}, "x": RunsCode()}
    save(contents, tmp_path / name)
    with pytest.raises(CheckpointError, match="is not a (PyTorch|detectron2 .pkl) checkpoint"):
        load_checkpoint(tmp_path / name)
    assert not (tmp_path / "pwned").exists()


def test_inspect_prints_format_network_kept_dropped_and_sha256(tmp_path, capsys):
    path = tmp_path / "moco.pth.tar"
    save(LAYOUTS["moco v2"][2](resnet_state(0), resnet_state(1)), path)
    out = run_main(capsys, "inspect", str(path))
    assert "format: moco, as saved by facebookresearch/moco" in out and f"arch: {ARCH}, width {WIDTH}" in out
    assert re.search(r"kept: 120 tensors under 'module\.encoder_q\.' in state_dict: the query encoder", out)
    assert "  module.encoder_k (124 tensors)\n" in out and "  module.encoder_q.fc (4 tensors)\n" in out
    assert f"sha256: {sha256_file(path)}\n" in out


def test_eval_of_a_checkpoint_needs_no_arch_and_records_its_format(tmp_path, workdir, capsys):
    path = tmp_path / "solo.ckpt"
    torch.manual_seed(0)  # an initialised network: all-random BN statistics would make NaN features
    save(LAYOUTS["solo-learn byol"][2](build_backbone(ARCH, WIDTH).state_dict(), resnet_state(1)), path)
    out = run_main(capsys, "eval", "--task", "knn", "--recipe", "tiny", "--workdir", str(workdir),
                   "--checkpoint", str(path), "--label", "solo_byol")
    assert "checkpoint: solo-learn, resnet18 of width 16; the backbone is backbone, the online network" in out
    records = [json.loads(line) for line in records_path(workdir).read_text().splitlines()]
    ours = [r for r in records if r["method"] == "solo_byol"]
    assert ours and all(r["checkpoint_format"] == "solo-learn" and r["config_hash"] == r["artifact_sha256"]
                        == sha256_file(path) for r in ours)
