"""Remote boards over ssh, with real parts only: a real sshd on loopback plays the board.

The runner executes on the "board" with this project's own python (``sys.executable``); models
are tiny ONNX graphs built with onnx.helper and measured with a handful of runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlprune_edge import cli
from rlprune_edge.errors import DeviceError, UserError
from rlprune_edge.fsutil import sha256_file
from rlprune_edge.latency import remote, remote_cache, ssh, upload
from rlprune_edge.paths import CACHE_ENV
from rlprune_edge.profiles import load_profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sshd_fixture  # noqa: E402

pytestmark = pytest.mark.ssh


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """One sshd for the module (starting it costs about a second)."""
    if not sshd_fixture.SSHD.exists():
        pytest.skip("/usr/sbin/sshd is absent (apt install openssh-server; tools/setup.sh does it on CI)")
    b = sshd_fixture.start_board(tmp_path_factory.mktemp("sshd"))
    yield b
    b.stop()


@pytest.fixture
def env(board, tmp_path, monkeypatch):
    """Point ssh at the fixture's client config and the result cache at a fresh dir."""
    monkeypatch.setenv(ssh.SSH_CONFIG_ENV, str(board.ssh_config))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path


def profile_at(board, env: Path, file: str, **kw) -> Path:
    """A profile aimed at the fixture board (by default its work dir is shared by the module's tests)."""
    return board.profile(env / file, **kw)


def tiny(path: Path, channels: int = 8) -> Path:
    """A tiny ONNX conv net; `channels` changes the content (and so the sha256)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((channels, 3, 3, 3), 0.01, dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 16, 16])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def wrapper(path: Path, body: str) -> str:
    """An executable shell script used as the board's python; returns its path."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------- happy path


def test_bench_remote_json_has_the_local_shape(board, env, capsys):
    pytest.importorskip(
        "rlprune_edge.commands.bench", reason="`bench` is another engineer's command, not landed"
    )
    model = tiny(env / "m.onnx")
    prof = profile_at(board, env, "board.toml")
    code, out, err = run_cli(["bench", str(model), "--profile", str(prof), "--runs", "5", "--json"], capsys)
    assert code == 0, err
    remote_doc = json.loads(out)
    code, out, err = run_cli(["bench", str(model), "--profile", "host-cpu", "--runs", "5", "--json"], capsys)
    assert code == 0, err
    local_doc = json.loads(out)
    assert set(remote_doc) == set(local_doc)
    assert set(remote_doc["runtime"]) == set(local_doc["runtime"])
    assert len(remote_doc["samples_ms"]) == 5
    assert remote_doc["median_ms"] > 0
    assert remote_doc["runtime"]["name"] == "onnxruntime"
    assert remote_doc["device"]["python_executable"] == sys.executable  # measured by the board's python


def test_get_backend_measure_and_compare(board, env):
    from rlprune_edge.latency.registry import get_backend
    from rlprune_edge.runtimes.backend import LatencyBackend

    prof = load_profile(profile_at(board, env, "board.toml"))
    backend = get_backend(prof)
    assert isinstance(backend, remote.RemoteBackend)
    assert isinstance(backend, LatencyBackend)
    a, b = tiny(env / "a.onnx", 8), tiny(env / "b.onnx", 32)
    m = backend.measure(a, warmup=1, runs=5, per_layer=True)
    assert len(m.samples_ms) == 5 and m.median_ms > 0 and m.p90_ms >= m.median_ms
    assert m.per_layer and all(layer.median_ms >= 0 for layer in m.per_layer)
    assert m.device["cpu_count"] >= 1 and "onnxruntime" in m.device["packages"]
    both = backend.compare([a, b], blocks=2, warmup=1, runs=4)
    assert len(both) == 2
    assert both[0].ratio == pytest.approx(1.0)
    assert both[1].ratio is not None and both[1].ratio > 0


def test_content_addressed_copies_are_not_resent(board, env):
    prof = load_profile(profile_at(board, env, "board.toml", work_dir=env / "fresh-work"))
    work = Path(prof.connection.work_dir)
    model = tiny(env / "m.onnx")
    first = remote.RemoteBackend(prof)
    first.measure(model, warmup=1, runs=3)
    assert [kind for kind, _ in first.transfers] == ["runner", "model"]
    assert [step for step, _ in first.attempts] == [
        "measure",
        "measure",
    ]  # a check, then copy + run in one call
    sha = sha256_file(model)
    blob = work / "blobs" / f"{sha}.onnx"
    assert blob.read_bytes() == model.read_bytes()
    runner_dir = work / f"runner-{upload.runner_hash()}"
    assert (runner_dir / "runner.py").is_file() and (runner_dir / "facts.py").is_file()
    stamps = (blob.stat().st_mtime_ns, runner_dir.stat().st_mtime_ns)

    # a new backend (a new process, in effect) with other settings: measured again, nothing re-sent
    second = remote.RemoteBackend(prof)
    second.measure(model, warmup=1, runs=4)
    assert second.transfers == []
    assert [step for step, _ in second.attempts] == ["measure"]  # one ssh connection in steady state
    assert (blob.stat().st_mtime_ns, runner_dir.stat().st_mtime_ns) == stamps

    # changed model content: only the new model travels
    changed = tiny(env / "m.onnx", channels=16)
    second.measure(changed, warmup=1, runs=4)
    assert [kind for kind, _ in second.transfers] == ["model"]
    assert (work / "blobs" / f"{sha256_file(changed)}.onnx").is_file()


def test_results_are_cached_per_profile_and_model(board, env, monkeypatch):
    prof = load_profile(profile_at(board, env, "board.toml"))
    model = tiny(env / "m.onnx")
    backend = remote.RemoteBackend(prof)
    m1 = backend.measure(model, warmup=1, runs=3)
    calls = len(backend.attempts)
    m2 = backend.measure(model, warmup=1, runs=3)
    assert len(backend.attempts) == calls  # served from the cache: no ssh at all
    assert m2.samples_ms == m1.samples_ms
    monkeypatch.setenv(remote_cache.NO_CACHE_ENV, "1")
    m3 = backend.measure(model, warmup=1, runs=3)
    assert len(backend.attempts) == calls + 1 and m3.samples_ms != m1.samples_ms  # measured afresh, stored
    monkeypatch.delenv(remote_cache.NO_CACHE_ENV)
    entries = cache_files(env / "cache")
    assert (
        len(entries) == 1 and json.loads(entries[0].read_text())["measurement"]["median_ms"] == m3.median_ms
    )
    # another profile name, runtime option or measurement setting is another entry
    other = load_profile(profile_at(board, env, "other.toml", name="other-board"))
    args = ["measure", "--runs", "3"]
    keys = {
        backend.cache.key("ab" * 32, args=args, per_layer=False),
        remote.RemoteBackend(other).cache.key("ab" * 32, args=args, per_layer=False),
        backend.cache.key("ab" * 32, args=[*args[:-1], "4"], per_layer=False),
        backend.cache.key("ab" * 32, args=args, per_layer=True),
        backend.cache.key("cd" * 32, args=args, per_layer=False),
    }
    assert len(keys) == 5


def test_remote_arguments_are_quoted(board, env):
    # a work dir with spaces and shell metacharacters must arrive as one literal path
    evil = env / "work dir $(touch PWNED); `touch PWNED2` 'q'"
    prof = load_profile(profile_at(board, env, "board.toml", work_dir=evil))
    m = remote.RemoteBackend(prof).measure(tiny(env / "m.onnx"), warmup=1, runs=2)
    assert m.median_ms > 0
    assert (evil / "blobs").is_dir()
    home = Path.home()
    for where in (env, home, evil, Path.cwd()):
        assert not (where / "PWNED").exists() and not (where / "PWNED2").exists()


def test_profiles_check_and_fetching_a_board_file(board, env, capsys):
    prof_path = profile_at(board, env, "board.toml")
    code, out, err = run_cli(["profiles", "check", str(prof_path), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] and report["device"]["python_executable"] == sys.executable
    # the transport's fetch brings a board file back byte for byte (how engines come home)
    backend = remote.RemoteBackend(load_profile(prof_path))
    back = backend.ssh.fetch(f"runner-{upload.runner_hash()}/runner.py", env / "back" / "runner.py")
    assert back.read_bytes() == (upload.board_dir() / "runner.py").read_bytes()
    assert [step for step, _ in backend.attempts] == ["fetch"]


def test_engine_build_on_a_board_without_tensorrt_names_jetpack(board, env):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is importable here; the missing-runtime premise does not hold")
    path = profile_at(board, env, "trt-board.toml")  # the fixture board's profile, on TensorRT
    path.write_text(path.read_text().replace('name = "onnxruntime"\nprovider = "CPUExecutionProvider"\nthreads = 1\n'
                                             'inter_op_threads = 1\ngraph_optimization = "all"\n',
                                             'name = "tensorrt"\nprecision = "fp16"\n'))
    prof = load_profile(path)
    assert prof.runtime.name == "tensorrt"
    out = env / "bundle" / "model.engine"
    with pytest.raises(DeviceError) as exc:
        remote.build_engine_remote(prof, tiny(env / "m.onnx"), out, "fp16")
    assert "'tensorrt'" in str(exc.value) and "JetPack" in str(exc.value)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- faults


def test_unreachable_board_fails_fast_with_a_clear_error(board, env, capsys):
    closed = sshd_fixture.free_port()
    prof_path = profile_at(
        board, env, "down.toml", destination="nobody@127.0.0.1", port=closed, connect_timeout_s=3
    )
    model = tiny(env / "m.onnx")
    t0 = time.monotonic()
    with pytest.raises(DeviceError) as exc:
        remote.RemoteBackend(load_profile(prof_path)).measure(model, warmup=1, runs=2)
    assert time.monotonic() - t0 < 3 + 2
    msg = str(exc.value)
    assert f"127.0.0.1:{closed}" in msg and "connect" in msg and "ssh" in msg
    assert cache_files(env / "cache") == []
    if Path(cli.__file__).with_name("commands").joinpath("bench.py").exists():
        code, out, err = run_cli(["bench", str(model), "--profile", str(prof_path), "--json"], capsys)
        assert code == 2 and "Traceback" not in err and "connect" in err


def test_silent_board_times_out_within_the_connect_timeout(board, env):
    import socket

    # a port that accepts TCP but never speaks SSH: a hung board or a wrong service
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        prof = load_profile(
            profile_at(
                board, env, "hung.toml", destination="nobody@127.0.0.1", port=port, connect_timeout_s=2
            )
        )
        backend = remote.RemoteBackend(prof)
        t0 = time.monotonic()
        with pytest.raises(DeviceError) as exc:
            backend.measure(tiny(env / "m.onnx"), warmup=1, runs=2)
        elapsed = time.monotonic() - t0
    assert 1.5 < elapsed < 2 + 3  # the profile's 2 s, not the 120 s command timeout, and not twice
    assert len(backend.attempts) == 1
    assert f"127.0.0.1:{port}" in str(exc.value) and "timed out" in str(exc.value)


def test_overrunning_runner_is_stopped_on_the_board_at_the_command_timeout(board, env):
    prof = load_profile(profile_at(board, env, "slow.toml", command_timeout_s=3))
    backend = remote.RemoteBackend(prof)
    t0 = time.monotonic()
    with pytest.raises(DeviceError) as exc:
        backend.measure(tiny(env / "m.onnx"), warmup=1, runs=10_000_000)
    assert time.monotonic() - t0 < 3 + 15
    assert "ran longer than 3 s" in str(exc.value) and "command_timeout_s" in str(exc.value)
    assert [rc for _, rc in backend.attempts][-1] == remote.BOARD_TIMEOUT_EXIT
    assert [step for step, _ in backend.attempts].count("measure") <= 2  # (a first-contact check) + one run
    assert cache_files(env / "cache") == []


def test_runner_killed_mid_measurement_retries_once_then_fails(board, env):
    count = env / "attempts"
    py = wrapper(
        env / "killing-python",
        f"""
if [ "$2" = measure ]; then
  echo x >> {json.dumps(str(count))}
  {json.dumps(sys.executable)} "$@" &
  pid=$!
  sleep 1
  kill -9 $pid
  wait $pid
  exit $?
fi
exec {json.dumps(sys.executable)} "$@"
""",
    )
    prof = load_profile(profile_at(board, env, "board.toml", python=py))
    backend = remote.RemoteBackend(prof)
    with pytest.raises(DeviceError) as exc:
        backend.measure(tiny(env / "m.onnx"), warmup=1, runs=10_000_000)
    msg = str(exc.value)
    assert "measure" in msg and "signal 9" in msg and board.alias in msg
    assert len(count.read_text().split()) == 2  # the first try and exactly one retry
    assert cache_files(env / "cache") == []  # no partial entry


def test_dropped_connection_is_retried_once_and_succeeds(board, env):
    count = env / "attempts"
    # the first measurement kills its own sshd session process: the client sees the connection drop
    py = wrapper(
        env / "dropping-python",
        f"""
if [ "$2" = measure ]; then
  echo x >> {json.dumps(str(count))}
  if [ "$(wc -l < {json.dumps(str(count))})" -eq 1 ]; then
    session=$(awk '{{print $4}}' /proc/$PPID/stat)
    kill -9 "$session"
    sleep 5
  fi
fi
exec {json.dumps(sys.executable)} "$@"
""",
    )
    prof = load_profile(profile_at(board, env, "board.toml", python=py))
    backend = remote.RemoteBackend(prof)
    m = backend.measure(tiny(env / "m.onnx"), warmup=1, runs=3)
    assert m.median_ms > 0
    assert len(count.read_text().split()) == 2
    assert [rc for step, rc in backend.attempts if step == "measure"][-2:] == [255, 0]
    assert len(cache_files(env / "cache")) == 1


def test_remote_runtime_missing_names_the_package(board, env, tmp_path):
    # a python with numpy but without onnxruntime: site-packages off, numpy alone on PYTHONPATH
    import numpy

    site = tmp_path / "numpy-only"
    site.mkdir()
    numpy_dir = Path(numpy.__file__).parent
    for sibling in numpy_dir.parent.iterdir():
        if (
            sibling.name == "numpy"
            or sibling.name.startswith("numpy.libs")
            or sibling.name.startswith("numpy-")
        ):
            (site / sibling.name).symlink_to(sibling)
    py = wrapper(
        env / "numpy-only-python", f'PYTHONPATH={json.dumps(str(site))} exec {sys.executable} -S "$@"\n'
    )
    probe = subprocess.run([py, "-c", "import numpy; import onnxruntime"], capture_output=True, text=True)
    assert "onnxruntime" in probe.stderr  # the premise: numpy imports, onnxruntime does not
    prof = load_profile(profile_at(board, env, "board.toml", python=py))
    with pytest.raises(DeviceError) as exc:
        remote.RemoteBackend(prof).measure(tiny(env / "m.onnx"), warmup=1, runs=2)
    assert "'onnxruntime'" in str(exc.value) and "pip install onnxruntime" in str(exc.value)
    # the same through the installed command: exit 2, one sentence, no traceback
    exe = Path(sys.executable).with_name("rlprune-edge")
    done = subprocess.run(
        [str(exe), "bench", str(env / "m.onnx"), "--profile", str(env / "board.toml"), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, ssh.SSH_CONFIG_ENV: str(board.ssh_config)},
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "pip install onnxruntime" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system python3 to play a bare board")
def test_bare_system_python_names_the_missing_package(board, env):
    bare = subprocess.run(["/usr/bin/python3", "-c", "import numpy"], capture_output=True)
    if bare.returncode == 0:
        pytest.skip("the system python has numpy; the bare-board premise does not hold here")
    prof = load_profile(profile_at(board, env, "board.toml", python="/usr/bin/python3"))
    with pytest.raises(DeviceError) as exc:
        remote.RemoteBackend(prof).measure(tiny(env / "m.onnx"), warmup=1, runs=2)
    assert "'numpy'" in str(exc.value) and "python3-numpy" in str(exc.value)


def test_unknown_host_key_is_refused_without_retry(board, env, tmp_path):
    config = tmp_path / "ssh_config_unknown_key"
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    config.write_text(board.ssh_config.read_text().replace(str(board.known_hosts), str(empty)))
    prof = load_profile(profile_at(board, env, "board.toml", work_dir=env / "fresh-work"))
    backend = remote.RemoteBackend(prof, ssh_config=config)
    with pytest.raises(DeviceError) as exc:
        backend.measure(tiny(env / "m.onnx"), warmup=1, runs=2)
    assert "host key" in str(exc.value) and "never disables host-key checking" in str(exc.value)
    assert len(backend.attempts) == 1
    assert not (Path(prof.connection.work_dir)).exists()  # nothing ran on the board


def test_malformed_and_unsafe_profiles_are_refused(board, env, capsys):
    bad = env / "bad.toml"
    bad.write_text(
        profile_at(board, env, "ok.toml")
        .read_text()
        .replace("connect_timeout_s = 5", 'connect_timeout_s = "5s"')
    )
    with pytest.raises(UserError, match=r"bad\.toml.*\[connection\] connect_timeout_s"):
        load_profile(bad)
    if Path(cli.__file__).with_name("commands").joinpath("bench.py").exists():
        code, _, err = run_cli(["bench", str(tiny(env / "m.onnx")), "--profile", str(bad)], capsys)
        assert code == 2 and "connect_timeout_s" in err and "Traceback" not in err

    unsafe = env / "unsafe.toml"
    text = profile_at(board, env, "ok.toml").read_text()
    unsafe.write_text(
        text.replace('kind = "ssh"', 'kind = "ssh"\nssh_options = ["StrictHostKeyChecking=no"]')
    )
    with pytest.raises(UserError, match="host-key"):
        load_profile(unsafe)
    # a Profile built in code is checked by the transport too
    prof = load_profile(profile_at(board, env, "ok.toml"))
    for opt in ("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "-oProxyCommand=x"):
        conn = dataclasses.replace(prof.connection, ssh_options=(opt,))
        with pytest.raises(UserError):
            remote.RemoteBackend(dataclasses.replace(prof, connection=conn))


def test_ssh_argv_carries_profile_settings_as_separate_arguments(board, env):
    prof = load_profile(profile_at(board, env, "board.toml", port=2222))
    conn = dataclasses.replace(
        prof.connection, identity_file="~/.ssh/id_board", ssh_options=("ServerAliveInterval=5",)
    )
    backend = remote.RemoteBackend(dataclasses.replace(prof, connection=conn))
    argv = backend.ssh.argv("true")
    assert argv[:3] == ["ssh", "-F", str(board.ssh_config)]
    assert ["-p", "2222"] == argv[argv.index("-p") : argv.index("-p") + 2]
    assert argv[argv.index("-i") + 1] == str(Path.home() / ".ssh/id_board")
    assert "BatchMode=yes" in argv and "ConnectTimeout=5" in argv and "ServerAliveInterval=5" in argv
    assert argv[-3:] == ["--", board.alias, "true"]
    assert ssh.remote_path_expr("~/.cache/x y", "blobs/a") == "\"$HOME\"/'.cache/x y/blobs/a'"
    assert ssh.remote_path_expr("/abs/dir/", "f") == "/abs/dir/f"
    assert ssh.remote_path_expr("rel dir", "f") == "\"$HOME\"/'rel dir/f'"  # ssh starts in $HOME
    assert ssh.remote_command_expr("~/venv/bin/python -I") == '"$HOME"/venv/bin/python -I'
    assert ssh.remote_command_expr("python3") == "python3"  # bare names stay a PATH lookup


def test_receive_refuses_a_corrupt_copy_and_publishes_nothing(tmp_path):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("blobs/abc.onnx")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    wrong = "0" * 64
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            upload.receive_source(),
            str(tmp_path / "work"),
            "1000",
            f"file:blobs/abc.onnx:{wrong}",
        ],
        input=buf.getvalue(),
        capture_output=True,
    )
    assert done.returncode == 1 and b"checksum mismatch" in done.stderr
    assert list((tmp_path / "work").rglob("*")) == []  # no partial blob, no temp dir left


def test_receive_trims_old_blobs_but_keeps_those_in_use(tmp_path):
    import hashlib
    import io
    import tarfile

    blobs = tmp_path / "work" / "blobs"
    blobs.mkdir(parents=True)
    for i, name in enumerate(["old1.onnx", "old2.onnx", "in-use.onnx"]):
        (blobs / name).write_bytes(b"x" * 400)
        os.utime(blobs / name, (1000 + i, 1000 + i))  # long ago, oldest first
    data = b"n" * 400
    sha = hashlib.sha256(data).hexdigest()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo(f"blobs/{sha}.onnx")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    items = [f"file:blobs/{sha}.onnx:{sha}", "keep:blobs/in-use.onnx"]
    done = subprocess.run(
        [sys.executable, "-c", upload.receive_source(), str(tmp_path / "work"), "1000", *items],
        input=buf.getvalue(),
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in blobs.iterdir()) == sorted([f"{sha}.onnx", "in-use.onnx"])
    assert (blobs / f"{sha}.onnx").read_bytes() == data


# ---------------------------------------------------------------------------------------------- device facts


def test_facts_parsers():
    from rlprune_edge.board import facts

    pi = "processor\t: 0\nBogoMIPS\t: 108.00\nCPU part\t: 0xd08\n\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
    assert facts.cpu_model(pi) == "Raspberry Pi 4 Model B Rev 1.4"
    x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 49\nmodel name\t: AMD EPYC 7B12\n"
    assert facts.cpu_model(x86) == "AMD EPYC 7B12"
    assert facts.cpu_model("processor\t: 0\nCPU part\t: 0xd42\n") == "ARM CPU part 0xd42"
    assert facts.cpu_model("") is None
    t = facts.parse_throttled("throttled=0x50005")
    assert t["under_voltage_now"] and t["throttled_now"] and not t["arm_frequency_capped_now"]
    assert (
        t["under_voltage_occurred"] and t["throttled_occurred"] and not t["soft_temperature_limit_occurred"]
    )
    assert facts.parse_throttled("throttled=0x0")["throttled_now"] is False
    assert facts.parse_throttled("garbage") is None
    tegra = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023"
    assert facts.parse_nv_tegra_release(tegra) == "35.4.1"
    assert facts.parse_nv_tegra_release("nonsense") is None


def test_collect_facts_on_this_machine_and_under_a_bare_python():
    from rlprune_edge.board import facts

    f = facts.collect_facts()
    assert f["cpu_count"] == os.cpu_count() and f["machine"] and f["python"]
    assert f["packages"]["onnxruntime"] and f["packages"]["numpy"]
    json.dumps(f)  # JSON-ready
    # stdlib only: runs under `python3 -I -S` (no site-packages) and simply omits what it cannot import
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(Path(facts.__file__))], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    bare = json.loads(done.stdout)
    assert bare["cpu_count"] == os.cpu_count() and "onnxruntime" not in bare["packages"]
