"""distill.export.graph: the ONNX contract's graph, and its Grad-CAM against pytorch-grad-cam.

Every model gets realistic weights first (random ones give degenerate heat-maps that any
formula would match): ImageNet EfficientNet-Lite0 with a linear probe fitted on real
patches; ResNet-18 and MobileNetV3 with batch-norm statistics measured on real patches and
a few training steps. MobileNetV3's first head layer is rescaled so that its pre-activations
fall on all three pieces of hardswish (below −3, between, above 3): the analytic derivative
is then exercised where it matters. Everything runs at 80 px (3×3 feature maps), one thread.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from distill.export.gradcam import cam_to_image, gradcam_reference, pearson
from distill.export.graph import FEATURES_NAME, EdgeGraph, ExportError, export_onnx, ort_session
from distill.models.registry import build_model
from export_support import Patches, fit_linear_probe, to01, train_set  # noqa: F401 (train_set: a fixture)

torch.set_num_threads(1)
SIZE = 80
ARCHS = ("efficientnet_lite0", "resnet18", "mobilenet_v3_small", "mobilenet_v3_large")
CRACK = 1  # index of "crack" in the default labels
PATCHES = Patches(SIZE)
# Ops a TensorRT engine builds from without data-dependent shapes or control flow.
SIMPLE_OPS = {"Conv", "Clip", "Relu", "HardSwish", "HardSigmoid", "Add", "Mul", "Transpose", "Cast",
              "ReduceMean", "GlobalAveragePool", "Gemm", "MatMul", "Softmax", "Identity", "MaxPool",
              "Reshape", "Flatten", "Less", "LessOrEqual", "Where", "Div", "Sub", "Unsqueeze"}


# ----------------------------------------------------------------------------- real images


@pytest.fixture(scope="module")
def crack_images() -> np.ndarray:
    """Real crack patches never trained on: Özgenel walls and uav75 bridge crops (test split)."""
    return np.concatenate([PATCHES.ozgenel("crack", 4, offset=3), PATCHES.uav_crops("test", 3, crack=True)])


@pytest.fixture(scope="module")
def clear_images() -> np.ndarray:
    return np.concatenate([PATCHES.ozgenel("no_crack", 2, offset=3), PATCHES.uav_crops("test", 1, crack=False)])


# ----------------------------------------------------------------------------- models


def _measure_bn(model: nn.Module, x: torch.Tensor) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the exact statistics of the batch
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def _prepare(arch: str, x: torch.Tensor, y: torch.Tensor):
    torch.manual_seed(0)
    if arch == "efficientnet_lite0":
        model = build_model(arch, pretrained=True, input_size=SIZE).eval()
        fit_linear_probe(model, x, y)
        return model
    model = build_model(arch, input_size=SIZE)
    _measure_bn(model, x)
    if arch.startswith("mobilenet_v3"):
        first = model.net.classifier[0]
        with torch.no_grad():  # torchvision's N(0, 0.01) init keeps every z near 0: hardswish' ≈ 1/2
            z = first(model.embed(model.features(x)))
            first.weight.mul_(3.0 / float(z.std()))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(6):
        idx = torch.randperm(len(x), generator=g)[:16]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    _measure_bn(model, x)
    return model


@pytest.fixture(scope="module")
def exported(train_set, crack_images, clear_images, tmp_path_factory):
    """arch -> (model, ExportReport, path, ORT outputs on crack + clear images), built lazily."""
    cache = {}
    images = np.concatenate([crack_images, clear_images])

    def get(arch):
        if arch not in cache:
            model = _prepare(arch, *train_set)
            path = tmp_path_factory.mktemp(arch) / "model.onnx"
            report = export_onnx(model, path, check_images=images)
            sess = ort_session(path)
            logits, probs, cam = sess.run(["logits", "probs", "cam"], {"image": images})
            cache[arch] = (model, report, path, sess, {"logits": logits, "probs": probs, "cam": cam})
        return cache[arch]

    return get


# ----------------------------------------------------------------------------- the graph


@pytest.mark.parametrize("arch", ARCHS)
def test_graph_follows_the_contract_and_matches_pytorch(arch, exported, crack_images, clear_images):
    model, report, path, _, out = exported(arch)
    images = np.concatenate([crack_images, clear_images])
    assert report.checked and report.n_check_images == len(images)
    assert report.probs_max_abs_diff <= 1e-4 and report.cam_max_rel_diff <= 1e-3

    proto = onnx.load(str(path))
    inp = proto.graph.input[0]
    assert [i.name for i in proto.graph.input] == ["image"]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [SIZE, SIZE, 3]
    assert [o.name for o in proto.graph.output] == ["logits", "probs", "cam"]
    k, h, w = report.feature_shape
    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert shapes["logits"][1:] == [2] and shapes["probs"][1:] == [2] and shapes["cam"][1:] == [2, h, w]
    assert (h, w) == (3, 3)
    feature_node = [n for n in proto.graph.node if FEATURES_NAME in n.output]
    assert len(feature_node) == 1 and feature_node[0].op_type == "Identity" and feature_node[0].name == FEATURES_NAME
    assert any(FEATURES_NAME in n.input for n in proto.graph.node)
    ops = {n.op_type for n in proto.graph.node}
    assert ops <= SIMPLE_OPS, f"no control flow, shape arithmetic or data-dependent shapes: {ops - SIMPLE_OPS}"
    assert "Pad" not in ops, "SAME padding is folded into the convolutions"
    meta = {p.key: p.value for p in proto.metadata_props}
    assert '"label_names": ["no_crack", "crack"]' in meta["crack.model"]

    # uint8 in, normalisation folded: the same as the float model on image / 255.
    with torch.no_grad():
        logits = model(to01(images)).numpy()
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["probs"], torch.softmax(torch.from_numpy(logits), 1).numpy(), atol=1e-4)
    # The models are classifiers of a sort (6 training steps), not constant ones.
    n = len(crack_images)
    assert out["probs"][:n, CRACK].mean() > out["probs"][n:, CRACK].mean()
    assert len(set(out["probs"].argmax(1))) == 2


@pytest.mark.parametrize("arch", ARCHS)
def test_dynamic_batch_gives_the_same_per_image_results(arch, exported, crack_images, clear_images):
    _, _, _, sess, out = exported(arch)
    images = np.concatenate([crack_images, clear_images])[:5]
    five = sess.run(["logits", "probs", "cam"], {"image": images})
    for i in range(5):
        one = sess.run(["logits", "probs", "cam"], {"image": images[i:i + 1]})
        for a, b in zip(one, five):
            np.testing.assert_allclose(a[0], b[i], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(five[2], out["cam"][:5], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- Grad-CAM


def _nontrivial(cam_hw: np.ndarray, reference: np.ndarray) -> bool:
    return cam_hw.max() > 0 and reference.std() > 0.05


@pytest.mark.parametrize("arch", ARCHS)
def test_cam_equals_pytorch_grad_cam_on_real_cracks(arch, exported, crack_images):
    """Pearson ≥ 0.99 per image with the library's GradCAM, predicted class and class crack."""
    model, _, _, _, out = exported(arch)
    n = len(crack_images)
    cam = out["cam"][:n]
    pred = out["probs"][:n].argmax(1)
    for name, classes in (("predicted", pred), ("crack", np.full(n, CRACK))):
        reference = gradcam_reference(model, to01(crack_images), classes)
        assert reference.shape == (n, SIZE, SIZE) and reference.min() >= 0 and reference.max() <= 1
        mine = cam_to_image(cam[np.arange(n), classes], SIZE)
        scored = 0
        for i in range(n):
            if cam[i, classes[i]].max() == 0:  # no positive evidence: the library's map is empty too
                assert reference[i].max() == 0, f"{arch}: {name} class, image {i}: empty map, the library's is not"
                continue
            assert _nontrivial(cam[i, classes[i]], reference[i]), f"{name} map of image {i} is degenerate"
            r = pearson(mine[i], reference[i])
            assert r >= 0.99, f"{arch}: {name} class, image {i}: Pearson {r:.4f} with pytorch-grad-cam"
            scored += 1
        # The predicted class always has a map; "crack" may have none on a faint bridge crack
        # the model misses, but most real cracks must give a non-trivial map to compare.
        assert scored == n if name == "predicted" else scored >= n - 2, f"{arch}: only {scored} {name} maps"
        # Not just correlated: the same maps, up to float rounding.
        np.testing.assert_allclose(mine, reference, atol=1e-3)


def autograd_cam(model, x: torch.Tensor, c: int) -> np.ndarray:
    """Unnormalised Grad-CAM from autograd: ReLU(Σ_k mean_ij(∂y_c/∂A_kij) A_k)."""
    fmap = model.features(x).detach().requires_grad_(True)
    logits = model.head(model.embed(fmap))
    (grad,) = torch.autograd.grad(logits[:, c].sum(), fmap)
    return torch.relu((grad.mean(dim=(2, 3), keepdim=True) * fmap).sum(1)).detach().numpy()


@pytest.mark.parametrize("arch", ARCHS)
def test_cam_is_unnormalised_grad_cam(arch, exported, crack_images):
    """The graph's cam has Grad-CAM's own scale (tiles of a frame are compared by it): autograd."""
    model, _, _, _, out = exported(arch)
    for c in (0, 1):
        want = autograd_cam(model, to01(crack_images), c)
        got = out["cam"][: len(crack_images), c]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.max()))


@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6])
def test_relu_heads_get_their_exact_derivative(act, tmp_path, train_set, crack_images, clear_images):
    """Linear → ReLU/ReLU6 → Linear heads: the same analytic gradient with their derivative."""
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", input_size=SIZE)
    model.net.classifier[1] = act(inplace=True)
    _measure_bn(model, train_set[0])
    images = np.concatenate([crack_images, clear_images])
    x = to01(images)
    first, last = model.net.classifier[0], model.net.classifier[3]
    with torch.no_grad():
        z = first(model.embed(model.features(x)))
        first.weight.mul_(4.0 / float(z.std()))
        last.weight.normal_(0, 0.1)
        z = first(model.embed(model.features(x)))
    kinks = (0.0, 6.0) if act is nn.ReLU6 else (0.0,)
    for lo, hi in zip((-np.inf, *kinks), (*kinks, np.inf)):
        assert ((z > lo) & (z < hi)).float().mean() > 0.02, "pre-activations on every piece"
    report = export_onnx(model, tmp_path / "m.onnx", check_images=images)
    assert report.cam_method == "analytic-mlp"
    cam = ort_session(tmp_path / "m.onnx").run(["cam"], {"image": images})[0]
    for c in (0, 1):
        want = autograd_cam(model, x, c)
        assert want.max() > 0
        np.testing.assert_allclose(cam[:, c], want, rtol=1e-4, atol=1e-4 * float(want.max()))


@pytest.mark.parametrize("arch", ARCHS)
def test_cam_is_class_specific(arch, exported, crack_images, clear_images):
    """Swapping the classes' weights (the classic bug) would fail the oracle comparison."""
    model, _, _, _, out = exported(arch)
    images = np.concatenate([crack_images, clear_images])
    cam = out["cam"]
    assert not np.allclose(cam[:, 0], cam[:, 1])
    failures = 0
    for c in (0, 1):
        reference = gradcam_reference(model, to01(images), c)
        right, wrong = cam_to_image(cam[:, c], SIZE), cam_to_image(cam[:, 1 - c], SIZE)
        for i in range(len(images)):
            if cam[i, c].max() > 0:
                assert pearson(right[i], reference[i]) >= 0.99
            r_wrong = pearson(wrong[i], reference[i])
            failures += not (r_wrong >= 0.99)  # NaN (a constant map) fails too
    assert failures >= len(images)


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_mobilenet_v3_cam_needs_the_hardswish_derivative(arch, exported, crack_images):
    """The analytic gradient W2·diag(hardswish'(z))·W1 is what makes the maps agree.

    The pre-activations z cover all three pieces of hardswish, and the maps computed with a
    wrong derivative (a constant 1 or 1/2, i.e. the head treated as linear) fail the oracle
    comparison on some image where the exported graph passes on all.
    """
    model, _, _, _, out = exported(arch)
    x = to01(crack_images)
    first, last = model.net.classifier[0], model.net.classifier[3]
    with torch.no_grad():
        fmap = model.features(x)
        z = first(model.embed(fmap))
    for region in (z < -3, (z >= -3) & (z <= 3), z > 3):
        assert region.float().mean() > 0.05, "pre-activations must exercise every piece of hardswish"
    reference = gradcam_reference(model, x, CRACK)
    w1, w2 = first.weight.detach().numpy(), last.weight.detach().numpy()
    a = fmap.numpy()
    worst = {}
    for name, d in (("constant 1", np.ones_like(z.numpy())), ("constant 1/2", np.full_like(z.numpy(), 0.5))):
        alpha = np.einsum("nh,hk->nk", w2[CRACK][None] * d, w1)
        wrong = np.maximum(np.einsum("nk,nkij->nij", alpha, a), 0)
        rs = [pearson(m, r) for m, r in zip(cam_to_image(wrong, SIZE), reference)]
        worst[name] = min((r if not np.isnan(r) else -1.0) for r in rs)
    mine = cam_to_image(out["cam"][: len(crack_images), CRACK], SIZE)
    assert min(pearson(m, r) for m, r in zip(mine, reference)) >= 0.99
    assert all(v < 0.99 for v in worst.values()), worst


def test_cam_to_image_is_the_libraries_scaling():
    from pytorch_grad_cam.utils.image import scale_cam_image

    rng = np.random.default_rng(0)
    cams = np.maximum(rng.normal(size=(3, 3, 3)).astype(np.float32), 0)
    cams[2] = 0.0
    ours = cam_to_image(cams, SIZE)
    theirs = scale_cam_image(scale_cam_image(cams, (SIZE, SIZE)))
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert ours.shape == (3, SIZE, SIZE) and not ours[2].any()
    assert cam_to_image(cams[None], 16).shape == (1, 3, 16, 16)


def test_gradcam_reference_leaves_the_model_alone(exported, crack_images):
    model, *_ = exported("resnet18")
    model.train()
    try:
        model.zero_grad(set_to_none=True)
        gradcam_reference(model, to01(crack_images[:2]), [0, 1])
        assert model.training and all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


# ----------------------------------------------------------------------------- refusals


def test_vgg_head_is_refused_with_a_clear_error(tmp_path, crack_images):
    model = build_model("vgg11_bn", input_size=SIZE)
    with pytest.raises(ExportError, match=r"Grad-CAM is not supported for vgg11_bn.*pool"):
        export_onnx(model, tmp_path / "vgg.onnx", check_images=crack_images)
    assert not (tmp_path / "vgg.onnx").exists()


def test_unsupported_head_layer_is_refused(tmp_path):
    model = build_model("mobilenet_v3_small", input_size=64)
    model.net.classifier[1] = nn.GELU()  # no analytic derivative in the graph for it
    with pytest.raises(ExportError, match="GELU"):
        export_onnx(model, tmp_path / "m.onnx", check=False)


def test_check_needs_real_images_of_the_right_shape(tmp_path, crack_images):
    model = build_model("mobilenet_v3_small", input_size=SIZE).eval()
    with pytest.raises(ExportError, match="check_images"):
        export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="uint8"):
        export_onnx(model, tmp_path / "m.onnx", check_images=crack_images.astype(np.float32))
    with pytest.raises(ExportError, match=f"N×{SIZE}×{SIZE}×3"):
        export_onnx(model, tmp_path / "m.onnx", check_images=crack_images[:, :64, :64])
    assert not (tmp_path / "m.onnx").exists()


def test_a_graph_that_disagrees_with_pytorch_is_not_written(tmp_path, crack_images, monkeypatch):
    """The self-check compares ONNX Runtime with PyTorch; a skewed export must be caught."""
    original = EdgeGraph.cam

    def skewed(self, fmap, emb):
        out = original(self, fmap, emb)
        return out * 1.05 if torch.onnx.is_in_onnx_export() else out

    monkeypatch.setattr(EdgeGraph, "cam", skewed)
    model = build_model("mobilenet_v3_small", input_size=SIZE)
    _measure_bn(model, to01(crack_images))
    with pytest.raises(ExportError, match=r"cam differs by .* of its largest value"):
        export_onnx(model, tmp_path / "m.onnx", check_images=crack_images)
    assert not list(tmp_path.iterdir())
