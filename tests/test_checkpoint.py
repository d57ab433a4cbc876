"""distill.models.checkpoint: self-describing checkpoints, atomic writes, initialising from files."""

from __future__ import annotations

import os
import stat

import pytest
import torch
import torchvision

from distill.models.checkpoint import checkpoint_info, load_classifier, save_checkpoint
from distill.models.weights import init_from_file
from distill.models.errors import ModelError
from distill.models.registry import build_model
from support import calibrated

torch.set_num_threads(1)  # tiny models; extra OpenMP threads only slow a busy machine down
SIZE = 32
LABELS3 = ("spalling", "crack", "no_crack")  # deliberately not alphabetical


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def trained_a_little(arch: str, labels=LABELS3):
    """A model whose batch-norm statistics moved away from their defaults."""
    return calibrated(build_model(arch, label_names=labels, input_size=SIZE), SIZE)


def outputs(model, x):
    with torch.no_grad():
        return model(x)


def files_in(folder):
    return sorted(p.name for p in folder.iterdir())


# --- save / load ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "efficientnet_lite0"])
def test_round_trip_keeps_outputs_and_meta(tmp_path, arch):
    model = trained_a_little(arch)
    path = tmp_path / "best.pt"
    save_checkpoint(path, model, info={"epoch": 3, "val_mcc": 0.5})
    loaded = load_classifier(path)
    x = torch.rand(2, 3, SIZE, SIZE)
    assert torch.equal(outputs(loaded, x), outputs(model, x))
    assert loaded.meta.to_dict() == model.meta.to_dict()
    assert loaded.meta.label_names == LABELS3  # order kept
    assert not loaded.training
    assert checkpoint_info(path) == {"epoch": 3, "val_mcc": 0.5}
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    model = build_model("mobilenet_v3_small", input_size=SIZE)
    path = tmp_path / "ckpt" / "best.pt"  # the folder is created
    save_checkpoint(path, model, info={"n": 1})
    save_checkpoint(path, model, info={"n": 2})  # overwrite in place
    assert files_in(path.parent) == ["best.pt"]
    assert checkpoint_info(path) == {"n": 2}

    def crash_mid_write(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C during a save

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, info={"n": 3})
    monkeypatch.undo()
    assert files_in(path.parent) == ["best.pt"]
    assert checkpoint_info(path) == {"n": 2}  # the previous checkpoint is intact


def test_checkpoint_gets_ordinary_file_permissions(tmp_path):
    """Not mkstemp's 0600: a checkpoint is meant to be shared and copied."""
    save_checkpoint(tmp_path / "best.pt", build_model("mobilenet_v3_small", input_size=SIZE))
    (tmp_path / "plain.txt").write_text("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "best.pt").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)


def test_files_that_are_not_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_classifier(tmp_path / "missing.pt")
    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        load_classifier(tmp_path / "random.pt")
    (tmp_path / "notes.txt").write_text("not a model\n")
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        load_classifier(tmp_path / "notes.txt")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "plain.pt")
    with pytest.raises(ModelError, match="not a distill checkpoint"):
        load_classifier(tmp_path / "plain.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ModelError, match="not a distill checkpoint"):
        load_classifier(tmp_path / "list.pt")
    with pytest.raises(ModelError, match="not a state dict"):
        init_from_file(build_model("mobilenet_v3_small", input_size=SIZE), tmp_path / "list.pt")


def test_damaged_checkpoint_is_a_model_error(tmp_path):
    """Weights that do not fit the checkpoint's own meta: ModelError, not a RuntimeError."""
    path = tmp_path / "best.pt"
    save_checkpoint(path, build_model("mobilenet_v3_small", input_size=SIZE))
    ckpt = torch.load(path, weights_only=True)
    ckpt["meta"]["arch"] = "mobilenet_v2"
    torch.save(ckpt, path)
    with pytest.raises(ModelError, match="do not fit"):
        load_classifier(path)
    del ckpt["state_dict"]
    torch.save(ckpt, path)
    with pytest.raises(ModelError, match="lacks"):
        load_classifier(path)


# --- init_from_file ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torchvision_resnet18(tmp_path_factory):
    """A plain torchvision ImageNet-style state dict (1000-class head), as a file."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    path = tmp_path_factory.mktemp("tv") / "resnet18-imagenet.pth"
    torch.save(state, path)
    return path, state


def test_torchvision_state_dict_initialises_the_backbone(torchvision_resnet18):
    path, state = torchvision_resnet18
    model = build_model("resnet18", input_size=SIZE, pretrained=str(path))
    own = model.net.state_dict()
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k
    assert own["fc.weight"].shape == (2, 512) and own["fc.bias"].shape == (2,)
    assert not torch.equal(own["fc.weight"], state["fc.weight"][:2])  # fresh, not a slice
    assert model.meta.init == str(path)


def test_pretrained_accepts_a_path_object(torchvision_resnet18):
    """A pathlib.Path used to be ignored (random init) because only str was recognised."""
    path, state = torchvision_resnet18
    model = build_model("resnet18", input_size=SIZE, pretrained=path)
    assert torch.equal(model.net.state_dict()["conv1.weight"], state["conv1.weight"])
    assert model.meta.init == str(path)


def test_wrapped_and_ddp_prefixed_state_dicts_load(tmp_path, torchvision_resnet18):
    _, state = torchvision_resnet18
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 7}, path)
    model = build_model("resnet18", input_size=SIZE)
    init_from_file(model, path)
    assert torch.equal(model.net.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_resnet34_weights_do_not_go_into_a_resnet18(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(num_classes=1000).state_dict(), path)
    model = build_model("resnet18", input_size=SIZE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelError, match="does not fit resnet18"):
        init_from_file(model, path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # untouched


def test_our_checkpoint_of_another_arch_is_refused(tmp_path):
    path = tmp_path / "mnv3.pt"
    save_checkpoint(path, build_model("mobilenet_v3_small", input_size=SIZE))
    with pytest.raises(ModelError, match="holds a mobilenet_v3_small, not a resnet18"):
        build_model("resnet18", input_size=SIZE, pretrained=str(path))


def test_legacy_torchvision_densenet_file_loads(tmp_path):
    """torchvision's DenseNet ImageNet files name layers "norm.1" and predate the batch-norm
    counter "num_batches_tracked"; torchvision remaps them, so must we."""
    state = torchvision.models.densenet121(num_classes=1000).state_dict()
    legacy = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        for layer in ("norm", "relu", "conv"):
            for i in ("1", "2"):
                k = k.replace(f".{layer}{i}.", f".{layer}.{i}.") if "denselayer" in k else k
        legacy[k] = v
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "densenet121-legacy.pth"
    torch.save(legacy, path)
    model = build_model("densenet121", input_size=SIZE, pretrained=str(path))
    own = model.net.state_dict()
    assert torch.equal(own["features.denseblock1.denselayer1.norm1.weight"],
                       state["features.denseblock1.denselayer1.norm1.weight"])
    assert torch.equal(own["features.denseblock4.denselayer16.conv2.weight"],
                       state["features.denseblock4.denselayer16.conv2.weight"])
    assert own["classifier.weight"].shape == (2, 1024)


def test_our_checkpoint_with_labels_in_another_order_is_reordered(tmp_path):
    source = trained_a_little("mobilenet_v3_small", labels=("a", "b", "c"))
    path = tmp_path / "abc.pt"
    save_checkpoint(path, source)
    target = build_model("mobilenet_v3_small", label_names=("c", "a", "b"), input_size=SIZE,
                         pretrained=str(path)).eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    expected = outputs(source, x)[:, [2, 0, 1]]
    assert (expected[:, 0] - expected[:, 1]).abs().min() > 1e-3  # a wrong order would show
    torch.testing.assert_close(outputs(target, x), expected)


def test_our_checkpoint_with_other_label_names_keeps_a_fresh_output_layer(tmp_path):
    source = trained_a_little("mobilenet_v3_small", labels=("a", "b", "c"))
    path = tmp_path / "abc.pt"
    save_checkpoint(path, source)
    target = build_model("mobilenet_v3_small", label_names=("x", "y", "z"), input_size=SIZE,
                         pretrained=str(path))
    src, own = source.net.state_dict(), target.net.state_dict()
    assert torch.equal(own["classifier.0.weight"], src["classifier.0.weight"])  # hidden head layer
    assert torch.equal(own["features.0.0.weight"], src["features.0.0.weight"])
    assert not torch.equal(own["classifier.3.weight"], src["classifier.3.weight"])
