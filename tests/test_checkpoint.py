"""Checkpoint round trips (dense and shrunk), shape records, and every way a checkpoint can be bad."""

from __future__ import annotations

import copy
import zipfile

import pytest
import torch

from rlprune_edge.checkpoint import (
    ModelInfo,
    apply_module_shapes,
    load_checkpoint,
    module_shapes,
    resolve_model,
    save_checkpoint,
)
from rlprune_edge.errors import UserError
from rlprune_edge.models import build_model


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    a.eval()
    b.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_dense_round_trip(tmp_path, tiny_vgg):
    model, info = tiny_vgg
    info.meta["note"] = "hello"
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, info)
    loaded, info2 = load_checkpoint(path)
    assert info2.layer_shapes is None  # dense: nothing to record
    assert info2.model == "vgg11" and info2.width == 0.125 and info2.input_shape == (3, 32, 32)
    assert info2.meta["note"] == "hello" and info2.class_names == info.class_names
    _same_outputs(model, loaded)
    # the file is plain weights_only-loadable data
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "rlprune-edge-checkpoint" and "state_dict" in raw
    assert not list(tmp_path.joinpath("sub").glob("*.tmp"))


def _shrink_vgg(model: torch.nn.Module) -> torch.nn.Module:
    """Keep the first 5 output channels of the first conv (and the matching BN / next conv inputs)."""
    shrunk = copy.deepcopy(model)
    shapes = module_shapes(shrunk)
    shapes["features.0"]["out_channels"] = 5
    shapes["features.1"]["num_features"] = 5
    shapes["features.4"]["in_channels"] = 5
    apply_module_shapes(shrunk, shapes)
    sd = model.state_dict()
    new_sd = {}
    for k, v in shrunk.state_dict().items():
        src = sd[k]
        if k.startswith("features.4.weight"):
            new_sd[k] = src[:, :5].clone()
        elif src.shape != v.shape:
            new_sd[k] = src[:5].clone()
        else:
            new_sd[k] = src.clone()
    shrunk.load_state_dict(new_sd)
    return shrunk


def test_shrunk_model_round_trip(tmp_path, tiny_vgg):
    model, info = tiny_vgg
    shrunk = _shrink_vgg(model)
    assert shrunk.features[0].out_channels == 5 and shrunk.features[4].in_channels == 5
    path = save_checkpoint(tmp_path / "shrunk.pt", shrunk, info)
    loaded, info2 = load_checkpoint(path)
    assert info2.layer_shapes is not None
    assert info2.layer_shapes["features.0"] == {"in_channels": 3, "out_channels": 5, "groups": 1}
    assert loaded.features[1].num_features == 5
    _same_outputs(shrunk, loaded)


def test_apply_module_shapes_rejects_unknown_layer():
    model = build_model("resnet20", 0.25)
    with pytest.raises(UserError, match="does not exist"):
        apply_module_shapes(model, {"nope.conv": {"in_channels": 1, "out_channels": 1, "groups": 1}})
    with pytest.raises(UserError, match="shape keys"):
        apply_module_shapes(model, {"conv1": {"num_features": 3}})


def test_module_shapes_cover_depthwise_groups():
    model = build_model("mobilenetv3_small", 0.25)
    shapes = module_shapes(model)
    assert any(s.get("groups", 1) > 1 for s in shapes.values())
    assert apply_module_shapes(model, shapes) is model  # identical shapes: a no-op


def test_corrupt_file_is_user_error(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="corrupt.pt"):
        load_checkpoint(bad)


def test_truncated_file_is_user_error(tmp_path, tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.pt"):
        load_checkpoint(cut)


def test_foreign_torch_file_is_user_error(tmp_path):
    other = tmp_path / "plain_state_dict.pt"
    torch.save(build_model("resnet20", 0.25).state_dict(), other)
    with pytest.raises(UserError, match="not an rlprune-edge checkpoint") as err:
        load_checkpoint(other)
    assert "rlprune-edge import" in str(err.value)  # a user's own state_dict is pointed to `import`


def test_pickled_code_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "rlprune-edge-checkpoint", "obj": zipfile.ZipInfo("x")}, evil)
    with pytest.raises(UserError, match="evil.pt"):
        load_checkpoint(evil)


def test_state_dict_of_another_architecture_is_user_error(tmp_path, tiny_vgg):
    _, info = tiny_vgg
    path = tmp_path / "mismatch.pt"
    raw_info = info.to_dict()
    torch.save({"format": "rlprune-edge-checkpoint", "version": 1, "info": raw_info,
                "state_dict": build_model("resnet20", 0.25).state_dict()}, path)
    with pytest.raises(UserError, match=r"mismatch.pt.*does not match the vgg11"):
        load_checkpoint(path)


def test_missing_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")


def test_resolve_model_by_name_and_path(tmp_path, tiny_checkpoint):
    model, info = resolve_model("resnet20", width=0.25, num_classes=3)
    assert info.num_classes == 3 and info.model == "resnet20" and len(info.class_names) == 3
    model2, info2 = resolve_model(str(tiny_checkpoint))
    assert info2.model == "vgg11"
    with pytest.raises(UserError, match="predicts 10 classes"):
        resolve_model(str(tiny_checkpoint), num_classes=100)
    with pytest.raises(UserError, match="neither an existing checkpoint"):
        resolve_model(str(tmp_path / "nothing_here.pt"))


def test_resolve_model_uses_data_stats(tiny_data):
    _, info = resolve_model("vgg11", width=0.125, data=tiny_data)
    assert info.mean == tiny_data.mean and info.class_names == tiny_data.class_names


def test_save_to_unwritable_path_is_user_error(tmp_path, tiny_vgg):
    model, info = tiny_vgg
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        save_checkpoint(blocker / "m.pt", model, info)


def test_model_info_dict_round_trip():
    info = ModelInfo("vgg19", 0.25, 10, (3, 32, 32), (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), list("abcdefghij"),
                     {"features.0": {"in_channels": 3, "out_channels": 4, "groups": 1}}, {"k": 1})
    assert ModelInfo.from_dict(info.to_dict()) == info


def test_torchvision_model_round_trip(tmp_path):
    model, info = resolve_model("torchvision:mobilenet_v3_small", num_classes=4)
    path = save_checkpoint(tmp_path / "tv.pt", model, info)
    loaded, info2 = load_checkpoint(path)
    assert info2.model == "torchvision:mobilenet_v3_small" and info2.layer_shapes is None
    _same_outputs(model, loaded)


def test_default_model_paths(tmp_path, monkeypatch, tiny_vgg, capsys):
    from types import SimpleNamespace

    import rlprune_edge.checkpoint as ck
    import rlprune_edge.train as tr

    shipped = ck.default_checkpoint_path()
    assert shipped.name == "vgg19_w0.25_fashion-mnist.pt" and shipped.parent.name == "assets"
    # a shipped asset wins over everything
    model, info = tiny_vgg
    asset = save_checkpoint(tmp_path / "asset.pt", model, info)
    monkeypatch.setattr(tr, "default_checkpoint_path", lambda: asset)
    assert tr.ensure_default_model(progress=False) == asset
    # with no shipped asset and nothing cached, the default recipe is trained once into the cache
    monkeypatch.setattr(tr, "default_checkpoint_path", lambda: tmp_path / "absent.pt")
    monkeypatch.delenv("RLPRUNE_EDGE_CACHE", raising=False)  # it would take precedence
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "rlprune-edge" / "vgg19_w0.25_fashion-mnist.pt"
    data = SimpleNamespace(num_classes=10, input_shape=(3, 32, 32), mean=(0.2,) * 3, std=(0.3,) * 3,
                           class_names=list("abcdefghij"), loader=lambda split, batch_size: [])
    trained: list[int] = []

    def fake_train(m, d, *, epochs, progress):
        trained.append(epochs)
        return {"best_val_acc": 0.5, "wall_s": 1.0}

    monkeypatch.setattr(tr, "load_data", lambda name: data)
    monkeypatch.setattr(tr, "train_model", fake_train)
    assert tr.ensure_default_model(progress=False) == cached
    assert trained == [ck.DEFAULT_EPOCHS] and "training vgg19" in capsys.readouterr().err
    _, got = load_checkpoint(cached)
    assert got.model == ck.DEFAULT_MODEL and got.meta["data"] == ck.DEFAULT_DATA and got.meta["val_acc"] == 0.5
    # from then on the cached one is used (no training)
    assert tr.ensure_default_model(progress=False) == cached and trained == [ck.DEFAULT_EPOCHS]


def test_unreadable_checkpoint_is_user_error(tiny_checkpoint, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(UserError, match=r"cannot read checkpoint .*tiny_vgg11.pt: Permission denied"):
        load_checkpoint(tiny_checkpoint)


def test_saved_file_mode_follows_umask(tmp_path, tiny_vgg):
    import os

    model, info = tiny_vgg
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "mode.pt", model, info)
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644
