"""Profile schema: shipped profiles load, validation names file and key, lookup by name or path."""

from __future__ import annotations

import pytest

from rlprune_edge.cli import main
from rlprune_edge.errors import UserError
from rlprune_edge.profiles import list_profiles, load_profile

SHIPPED = {"host-cpu", "raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "jetson-agx-orin",
           "desktop-gpu-tensorrt", "cuda-torch"}


def test_shipped_profiles_load_with_expected_runtimes():
    profiles = {p.name: p for p in list_profiles()}
    assert SHIPPED <= set(profiles)
    assert profiles["host-cpu"].runtime.name == "onnxruntime" and profiles["host-cpu"].connection.kind == "local"
    for pi in ("raspberry-pi-4", "raspberry-pi-5"):
        assert profiles[pi].runtime.threads == 4 and profiles[pi].connection.kind == "ssh"
    for j in ("jetson-orin-nano", "jetson-agx-orin"):
        assert profiles[j].runtime.name == "tensorrt" and profiles[j].runtime.precision == "fp16"
        assert profiles[j].is_remote
    assert profiles["desktop-gpu-tensorrt"].connection.kind == "local"
    assert profiles["cuda-torch"].runtime.device == "cuda"


def test_defaults_fill_missing_sections(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('name = "mine"\n[runtime]\nname = "onnxruntime"\n')
    p = load_profile(str(f))
    assert (p.measure.warmup, p.measure.runs, p.measure.blocks) == (20, 100, 5)
    assert p.pruning.channel_multiple == 8 and p.input.batch == 1 and p.input.shape == ()
    assert p.connection.connect_timeout_s == 10.0 and p.reward.latency == 1.0
    assert p.path == f.resolve()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('name = "x"\n[runtime]\nname = "onnxruntime"\nthreads = "four"\n', "[runtime] threads must be an integer, got 'four'"),
        ('name = "x"\n[runtime]\nname = "onnx"\n', "[runtime] name must be one of"),
        ('name = "x"\n[runtime]\nname = "onnxruntime"\nthread = 2\n', "[runtime] thread is not a known key (did you mean 'threads'?)"),
        ('name = "x"\n[runtime]\nname = "onnxruntime"\n[measure]\nruns = 0\n', "[measure] runs must be > 0"),
        ('[runtime]\nname = "onnxruntime"\n', "name is missing"),
        ('name = "x"\n', "[runtime] name is missing"),
        ('name = "x"\n[runtime]\nname = "onnxruntime"\n[input]\nshape = [3, "a"]\n', "[input] shape must be a list of integers"),
        ('name = "x"\n[runtime]\nname = "onnxruntime"\n[connection]\nkind = "ssh"\n', "destination is required"),
        ('name = "x"\n[runtime]\nname = "onnxruntime"\n[connection]\nkind = "ssh"\ndestination = "pi@h"\n'
         'ssh_options = ["StrictHostKeyChecking=no"]\n', "disables host-key checking"),
        ('name = "x"\n[runtime]\nname = "onnxruntime"\n[bogus]\na = 1\n', "bogus is not a known key"),
        ('name = "x"\n[runtime\n', "not valid TOML"),
    ],
)
def test_invalid_profiles_name_file_and_key(tmp_path, body, needle):
    f = tmp_path / "bad.toml"
    f.write_text(body)
    with pytest.raises(UserError) as exc:
        load_profile(str(f))
    assert needle in str(exc.value)
    assert "bad.toml" in str(exc.value)


def test_unknown_name_lists_known_and_closest():
    with pytest.raises(UserError) as exc:
        load_profile("raspbery-pi-4")
    msg = str(exc.value)
    assert "Did you mean 'raspberry-pi-4'" in msg and "host-cpu" in msg


def test_extra_profile_dir_from_env(tmp_path, monkeypatch):
    (tmp_path / "lab-board.toml").write_text('name = "lab-board"\n[runtime]\nname = "onnxruntime"\nthreads = 1\n')
    monkeypatch.setenv("RLPRUNE_EDGE_PROFILES_DIR", str(tmp_path))
    assert load_profile("lab-board").runtime.threads == 1
    assert "lab-board" in {p.name for p in list_profiles()}


def test_profiles_cli_list_show_check(capsys):
    assert main(["profiles", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SHIPPED)
    assert main(["profiles", "show", "jetson-orin-nano"]) == 0
    assert "precision = 'fp16'" in capsys.readouterr().out
    assert main(["profiles", "check", "host-cpu", "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["runtime"]["name"] == "onnxruntime" and doc["smoke_median_ms"] > 0


def test_profiles_cli_unknown_exits_2(capsys):
    assert main(["profiles", "show", "nope-board"]) == 2
    assert "unknown profile 'nope-board'" in capsys.readouterr().err
