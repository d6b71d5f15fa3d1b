import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoweld.train.backbones import (
    EfficientNetLite0,
    SamePadConv2d,
    assemble_backbone,
    build_backbone,
    lite0_weights_path,
)


def _chelsea(mean, std, size=224):
    skimage_data = pytest.importorskip("skimage.data")
    rgb = cv2.resize(skimage_data.chelsea(), (size, size), interpolation=cv2.INTER_AREA)
    x = (rgb.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
    return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())


@pytest.fixture(scope="module")
def lite0_classifier():
    model = EfficientNetLite0()
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)  # every key matches, no key left over
    return model.eval()


def test_lite0_real_weights_classify_chelsea_as_tabby_cat(lite0_classifier):
    """ImageNet class 285 is 'Egyptian cat'; the photo is a tabby. The weights were trained on
    [-1, 1] inputs (TensorFlow Lite's mean = std = 127.5): that normalisation gives 285 with a
    confident margin, which only happens when the architecture (SAME padding, ReLU6, BN eps,
    no squeeze-excite, block layout) matches the weights."""
    with torch.no_grad():
        probs = lite0_classifier(_chelsea([0.5] * 3, [0.5] * 3)).softmax(dim=1)[0]
    top2 = probs.topk(2)
    assert int(top2.indices[0]) == 285
    assert float(top2.values[0]) > 0.6
    assert float(top2.values[0]) > 4 * float(top2.values[1])


def test_lite0_symmetric_padding_would_be_less_confident(lite0_classifier, monkeypatch):
    """Guards the TensorFlow SAME padding: PyTorch-style symmetric padding is measurably worse."""
    x = _chelsea([0.5] * 3, [0.5] * 3)
    with torch.no_grad():
        same = float(lite0_classifier(x).softmax(1)[0, 285])
    monkeypatch.setattr(
        SamePadConv2d,
        "forward",
        lambda self, t: F.conv2d(
            t, self.weight, None, self.stride, self.kernel_size[0] // 2, 1, self.groups
        ),
    )
    with torch.no_grad():
        symmetric = float(lite0_classifier(x).softmax(1)[0, 285])
    assert same > symmetric + 0.05


def test_same_padding_matches_tensorflow_rule():
    conv = SamePadConv2d(1, 1, 3, stride=2)
    torch.nn.init.ones_(conv.weight)
    x = torch.ones(1, 1, 8, 8)
    with torch.no_grad():
        y = conv(x)
    assert y.shape[-2:] == (4, 4)
    # TF SAME with even input pads only at the end: the first output sees a full 3x3 window,
    # the last one sees 2 rows/cols of zeros padding.
    assert float(y[0, 0, 0, 0]) == 9.0
    assert float(y[0, 0, -1, -1]) == 4.0


@pytest.mark.parametrize("size", [64, 224])
def test_lite0_taps_are_stride_8_and_16(size):
    extractor = build_backbone("efficientnet_lite0")
    with torch.no_grad():
        taps = extractor(torch.zeros(2, 3, size, size))
    assert [tuple(t.shape) for t in taps] == [
        (2, 40, size // 8, size // 8),
        (2, 112, size // 16, size // 16),
    ]
    assert extractor.channels == (40, 112)
    assert extractor.layers == ("blocks.4", "blocks.10")


def test_lite0_forward_stops_after_last_tap():
    extractor = build_backbone("efficientnet_lite0")
    called = []
    for i, block in enumerate(extractor.model._blocks):
        block.register_forward_hook(lambda m, a, o, i=i: called.append(i))
    extractor.model._conv_head.register_forward_hook(lambda m, a, o: called.append("head"))
    with torch.no_grad():
        extractor(torch.zeros(1, 3, 64, 64))
    assert called == list(range(11))


@pytest.mark.parametrize(
    ("name", "n_params", "channels"),
    [
        # torchvision's published parameter counts for these architectures
        ("resnet18", 11_689_512, (128, 256)),
        ("resnet50", 25_557_032, (512, 1024)),
        ("wide_resnet50_2", 68_883_240, (512, 1024)),
    ],
)
def test_resnets_match_torchvision_layout(name, n_params, channels):
    extractor = build_backbone(name, random_weights=True)
    assert sum(p.numel() for p in extractor.model.parameters()) == n_params
    keys = set(extractor.model.state_dict())
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.bn2.weight",
        "fc.bias",
    ):
        assert key in keys
    assert extractor.channels == channels
    assert extractor.layers == ("layer2", "layer3")


def test_resnet_taps_and_no_layer4():
    extractor = build_backbone("resnet18", random_weights=True)
    ran = []
    extractor.model.layer4.register_forward_hook(lambda m, a, o: ran.append("layer4"))
    with torch.no_grad():
        taps = extractor(torch.zeros(1, 3, 64, 64))
    assert [tuple(t.shape) for t in taps] == [(1, 128, 8, 8), (1, 256, 4, 4)]
    assert ran == []


def test_resnet_weights_load_from_a_state_dict_file(tmp_path):
    source = assemble_backbone("resnet18", "test", None)
    with torch.no_grad():
        for p in source.model.parameters():
            p.normal_(0, 0.05)
    path = tmp_path / "resnet18.pth"
    torch.save(source.model.state_dict(), path)
    loaded = build_backbone("resnet18", weights=path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(source(x), loaded(x), strict=True):
            assert torch.equal(a, b)
    assert loaded.weights == str(path)
    assert loaded.weights_sha256 is not None and len(loaded.weights_sha256) == 64


def test_backbone_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="needs weights"):
        build_backbone("wide_resnet50_2")
    with pytest.raises(ValueError, match="unknown"):
        build_backbone("vgg16")
    with pytest.raises(ValueError, match="not a file"):
        build_backbone("resnet18", weights=tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="does not fit backbone 'resnet18'"):
        build_backbone("resnet18", weights=wrong)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read"):
        build_backbone("resnet18", weights=junk)
    with pytest.raises(ValueError, match="exclusive"):
        build_backbone("resnet18", weights=wrong, random_weights=True)


def test_extractor_stays_in_eval_mode():
    extractor = build_backbone("resnet18", random_weights=True)
    extractor.train()
    assert not extractor.training
    assert not any(m.training for m in extractor.modules())
    assert not any(p.requires_grad for p in extractor.parameters())


def test_other_taps_can_be_chosen_and_are_checked():
    extractor = build_backbone("efficientnet_lite0", layers=("blocks.2", "blocks.4"))
    assert extractor.channels == (24, 40) and extractor.strides == (4, 8)
    ran = []
    extractor.model._blocks[5].register_forward_hook(lambda m, a, o: ran.append(5))
    with torch.no_grad():
        taps = extractor(torch.zeros(1, 3, 64, 64))
    assert [tuple(t.shape) for t in taps] == [(1, 24, 16, 16), (1, 40, 8, 8)]
    assert ran == []  # stops after blocks.4
    with pytest.raises(ValueError, match="can tap two of"):
        build_backbone("efficientnet_lite0", layers=("blocks.3", "blocks.4"))
    with pytest.raises(ValueError, match="shallower tap first"):
        build_backbone("resnet18", random_weights=True, layers=("layer3", "layer2"))


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_and_lite2_weights_load_strictly_and_classify_chelsea(name):
    """Lite1/Lite2: the stage table read off their packages' state dicts; every key loads and
    the photo's top class is a cat (ImageNet 281-285) on [-1, 1] inputs, as for Lite0."""
    from autoweld.train.backbones import _LITE_STAGES, lite_weights_path

    model = EfficientNetLite0(stages=_LITE_STAGES[name])
    state = torch.load(lite_weights_path(name), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        probs = model.eval()(_chelsea([0.5] * 3, [0.5] * 3, size=240)).softmax(dim=1)[0]
    assert 281 <= int(probs.argmax()) <= 285
    extractor = build_backbone(name)
    assert extractor.info.strides == (8, 16)
    assert extractor.info.layers == ("blocks.6", "blocks.14")
