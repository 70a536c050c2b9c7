"""Hostile or careless SSH settings, misleading ssh failures and leftovers of killed exports (issue 17).

No sshd is needed: profiles are validated on load, ssh's failures are classified from canned
stderr (plus one real `ssh` run that fails before connecting), and the export test kills a real
`rlprune-edge export` with SIGKILL.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlprune_edge.cli import main
from rlprune_edge.errors import DeviceError, UserError
from rlprune_edge.fsutil import atomic_path, atomic_write_json, remove_stale_temps
from rlprune_edge.latency import remote, ssh
from rlprune_edge.paths import CACHE_ENV
from rlprune_edge.profiles import load_profile
from rlprune_edge.sshopts import ALLOWED_SSH_OPTIONS

REPO = Path(__file__).resolve().parent.parent


def ssh_profile(tmp_path: Path, *, options: list[str] | None = None, destination: str = "pi@board",
                extra: str = "", file: str = "board.toml") -> Path:
    """A minimal ssh profile file (written as TOML text, the way a user would share one)."""
    import json

    lines = [
        'name = "board"',
        "[runtime]",
        'name = "onnxruntime"',
        "[connection]",
        'kind = "ssh"',
        f"destination = {json.dumps(destination)}",
    ]
    if options is not None:
        lines.append(f"ssh_options = {json.dumps(options)}")
    path = tmp_path / file
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def refused(tmp_path: Path, **kw) -> str:
    """Load the profile, expect a UserError; return its message (checked to be one line, naming the file)."""
    with pytest.raises(UserError) as exc:
        load_profile(ssh_profile(tmp_path, **kw))
    msg = str(exc.value)
    assert "board.toml: [connection]" in msg and "\n" not in msg
    return msg


def dead_pid() -> int:
    """The pid of a process that has ended (and been waited for)."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


@pytest.fixture
def no_ssh_config(monkeypatch):
    monkeypatch.delenv(ssh.SSH_CONFIG_ENV, raising=False)


# ---------------------------------------------------------------------------------------------- ssh_options


@pytest.mark.hostile(
    'profile `ssh_options = ["ProxyCommand=..."]`',
    "refused at load, exit 2: ProxyCommand runs a command on this machine; put the jump host in "
    "~/.ssh/config and use its alias as destination",
)
def test_proxycommand_is_refused_at_load_with_exit_2(tmp_path, capsys):
    msg = refused(tmp_path, options=["ProxyCommand=sh -c 'touch /tmp/pwned' #%h"])
    assert "ProxyCommand runs a command on this machine" in msg
    assert "~/.ssh/config" in msg and "alias as destination" in msg
    # the space-separated, lower-case spelling ssh also accepts is the same option
    assert "ProxyCommand runs a command" in refused(tmp_path, options=["proxycommand nc %h %p"])
    path = ssh_profile(tmp_path, options=["ProxyCommand=nc %h %p"])
    assert main(["profiles", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert "ProxyCommand" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.hostile(
    "profile `ssh_options` with LocalCommand / PermitLocalCommand / KnownHostsCommand",
    "refused at load, exit 2, naming the option: it runs a command on this machine",
)
def test_options_that_run_local_commands_are_refused(tmp_path):
    for opt, name in [
        ("LocalCommand=touch /tmp/pwned", "LocalCommand"),
        ("PermitLocalCommand=yes", "PermitLocalCommand"),
        ("KnownHostsCommand=/bin/echo %H", "KnownHostsCommand"),
    ]:
        msg = refused(tmp_path, options=[opt])
        assert f"{opt!r} is refused: {name}" in msg and "runs a command on this machine" in msg


@pytest.mark.hostile(
    "profile `ssh_options` with StrictHostKeyChecking=accept-new/no or a fresh UserKnownHostsFile",
    "refused at load, exit 2: it changes how host keys are checked; add the board's key with a first "
    "manual ssh instead",
)
def test_host_key_bypasses_are_refused(tmp_path):
    for opt in [
        "StrictHostKeyChecking=accept-new",
        "StrictHostKeyChecking=no",
        "stricthostkeychecking off",
        "UserKnownHostsFile=/tmp/fresh_known_hosts",
        "UserKnownHostsFile=/dev/null",
        "GlobalKnownHostsFile=/tmp/k",
        "VerifyHostKeyDNS=yes",
    ]:
        msg = refused(tmp_path, options=[opt])
        assert "changes how host keys are checked" in msg and "never disables host-key checking" in msg
        assert "first manual `ssh`" in msg


@pytest.mark.hostile(
    'profile `ssh_options = ["ProxyJump=me@bastion"]`',
    "refused at load, exit 2: put the jump host in your ~/.ssh/config and use its alias as destination",
)
def test_proxyjump_is_refused_with_the_alias_hint(tmp_path):
    msg = refused(tmp_path, options=["ProxyJump=me@bastion.example.org"])
    assert "ProxyJump is not taken from a profile" in msg
    assert "put the jump host in your ~/.ssh/config" in msg and "use its alias as destination" in msg


@pytest.mark.hostile(
    "profile `ssh_options` with Include or Match",
    "refused at load, exit 2: they pull in other ssh configuration (Match exec runs commands)",
)
def test_include_and_match_are_refused(tmp_path):
    assert "Include would read other ssh configuration" in refused(tmp_path, options=["Include=/tmp/evil"])
    msg = refused(tmp_path, options=["Match exec \"touch /tmp/pwned\""])
    assert "Match would read conditional ssh configuration" in msg and "Match exec runs commands" in msg


@pytest.mark.hostile(
    "profile `ssh_options` entry or value starting with `-`, or holding a newline/NUL",
    "refused at load, exit 2: option injection; write plain Key=Value",
)
def test_option_injection_is_refused(tmp_path):
    assert "starts with '-'" in refused(tmp_path, options=["-oProxyCommand=touch /tmp/pwned"])
    assert "value starting with '-'" in refused(tmp_path, options=["Port=-oProxyCommand=x"])
    assert "value starting with '-'" in refused(tmp_path, options=["Ciphers=-3des-cbc"])
    for opt in ["User=pi\nProxyCommand touch /tmp/pwned", "User=pi\x00x", "Port=22\r"]:
        msg = refused(tmp_path, options=[opt])
        assert "newline, NUL or other control character" in msg and "Key=Value" in msg
    # a value smuggling a second word where one is expected
    assert "invalid value for Port" in refused(tmp_path, options=["Port=22 -oProxyCommand=x"])


@pytest.mark.hostile(
    "profile `ssh_options` with an option not on the allow-list (ForwardAgent, ControlPath, a typo)",
    "refused at load, exit 2, naming the option, the closest allowed one and the allow-list",
)
def test_options_off_the_allow_list_are_refused_by_name(tmp_path):
    for opt, key in [("ForwardAgent=yes", "ForwardAgent"), ("ControlPath=/tmp/s", "ControlPath"),
                     ("SendEnv=AWS_SECRET_ACCESS_KEY", "SendEnv")]:
        msg = refused(tmp_path, options=[opt])
        assert f"{key} is not an option a profile may set" in msg and "ServerAliveInterval" in msg
    assert "did you mean 'ServerAliveInterval'?" in refused(tmp_path, options=["ServerAliveIntervall=5"])
    assert "BatchMode: expected yes" in refused(tmp_path, options=["BatchMode=no"])
    assert "invalid value for LogLevel" in refused(tmp_path, options=["LogLevel=QUIET"])
    assert "is not Key=Value" in refused(tmp_path, options=["Compression"])


@pytest.mark.hostile(
    "profile `ssh_options` with allowed options in any case (`port = 2222`, `serveraliveinterval=5`)",
    "accepted, normalised to Key=Value and passed as separate `-o` arguments, never through a shell",
)
def test_allowed_options_pass_as_separate_arguments(tmp_path, no_ssh_config):
    options = ["port = 2222", "serveraliveinterval=5", "IdentitiesOnly=YES", "HostKeyAlgorithms=+ssh-rsa",
               "IPQoS=af21 cs1", "IdentityFile=~/.ssh/id_pi", "BatchMode=yes", "LogLevel=ERROR"]
    prof = load_profile(ssh_profile(tmp_path, options=options))
    backend = remote.RemoteBackend(prof)
    argv = backend.ssh.argv("true")
    expected = ["Port=2222", "ServerAliveInterval=5", "IdentitiesOnly=yes", "HostKeyAlgorithms=+ssh-rsa",
                "IPQoS=af21 cs1", "IdentityFile=~/.ssh/id_pi", "BatchMode=yes", "LogLevel=ERROR"]
    assert backend.ssh.options == expected
    for opt in expected:
        assert argv[argv.index(opt) - 1] == "-o"  # each its own argument, after its own -o
    assert argv[-3:] == ["--", "pi@board", "true"]
    assert set(ALLOWED_SSH_OPTIONS) >= {"Port", "User", "IdentityFile", "ConnectTimeout", "BatchMode"}


@pytest.mark.hostile(
    'profile `destination = "-oProxyCommand=..."` or with whitespace/control characters',
    "refused at load, exit 2: ssh would read it as an option; use an alias from ~/.ssh/config or user@host",
)
def test_destination_that_ssh_would_read_as_an_option_is_refused(tmp_path):
    msg = refused(tmp_path, destination="-oProxyCommand=touch /tmp/pwned")
    assert "destination '-oProxyCommand=touch /tmp/pwned' starts with '-'" in msg and "user@host" in msg
    for dest in ["pi@board -p 2222", "pi@board\n-oProxyCommand=x", "pi@\tboard"]:
        assert "contains whitespace or control characters" in refused(tmp_path, destination=dest)


@pytest.mark.hostile(
    "a Profile built in code (not loaded) with ProxyCommand or a `-` destination",
    "the ssh transport refuses it the same way (UserError) before running ssh",
)
def test_transport_checks_profiles_built_in_code(tmp_path, no_ssh_config):
    prof = load_profile(ssh_profile(tmp_path))
    for conn in [
        dataclasses.replace(prof.connection, ssh_options=("ProxyCommand=nc %h %p",)),
        dataclasses.replace(prof.connection, ssh_options=("StrictHostKeyChecking=accept-new",)),
        dataclasses.replace(prof.connection, destination="-oProxyCommand=x"),
    ]:
        with pytest.raises(UserError) as exc:
            remote.RemoteBackend(dataclasses.replace(prof, connection=conn))
        assert "profile 'board': [connection]" in str(exc.value)


# ---------------------------------------------------------------------------------------------- ssh failures

CANNED = [
    # (ssh's stderr, kind, the line passed on, words of our advice)
    ("hostname contains invalid characters\r\n", "bad_hostname", "hostname contains invalid characters",
     "fix [connection] destination"),
    ("ssh: Could not resolve hostname nosuchboard: Name or service not known\n", "resolve",
     "ssh: Could not resolve hostname nosuchboard: Name or service not known", "spelling"),
    ("pi@10.0.0.2: Permission denied (publickey,password).\n", "auth",
     "pi@10.0.0.2: Permission denied (publickey,password).", "authentication failed"),
    ("@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@@\nHost key verification failed.\n",
     "host_key", "WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!", "never disables host-key checking"),
    ("Host key verification failed.\n", "host_key", "Host key verification failed.", "verify the fingerprint"),
    ("ssh: connect to host 10.0.0.2 port 2222: Connection refused\n", "refused",
     "ssh: connect to host 10.0.0.2 port 2222: Connection refused", "sshd runs on the board"),
    ("ssh: connect to host 10.0.0.2 port 2222: Connection timed out\n", "timeout",
     "ssh: connect to host 10.0.0.2 port 2222: Connection timed out", "connect timeout"),
    ("ssh: connect to host 10.0.0.2 port 2222: Operation timed out\n", "timeout",
     "ssh: connect to host 10.0.0.2 port 2222: Operation timed out", "connect timeout"),
    ("ssh: connect to host 10.0.0.2 port 2222: No route to host\n", "no_route",
     "ssh: connect to host 10.0.0.2 port 2222: No route to host", "same network"),
    ("ssh: connect to host 10.0.0.2 port 2222: Network is unreachable\n", "no_route",
     "ssh: connect to host 10.0.0.2 port 2222: Network is unreachable", "same network"),
]


@pytest.mark.hostile(
    "ssh fails before the session: invalid host name characters, unknown host, permission denied, "
    "host key, refused, timed out, no route",
    "exit 2 quoting ssh's own reason and `ssh -p PORT -i KEY HOST` to try by hand; not retried, "
    "never called a dropped connection",
)
@pytest.mark.parametrize(("stderr", "kind", "said", "words"), CANNED)
def test_ssh_own_reason_is_passed_on(tmp_path, no_ssh_config, stderr, kind, said, words):
    key = tmp_path / "pi_key"
    prof = load_profile(ssh_profile(tmp_path, extra=f'port = 2222\nidentity_file = "{key}"\n'))
    backend = remote.RemoteBackend(prof)
    assert ssh.classify_ssh_stderr(stderr) == (kind, said)
    res = ssh.SshResult(255, b"", stderr, 0.1)
    assert not backend.ssh.retryable(res)
    msg = str(backend.ssh.fail(res, "measure", "unused"))
    assert msg.startswith("host pi@board:2222: ") and f'ssh says "{said}"' in msg and words in msg
    assert "dropped" not in msg and "power supply" not in msg
    program = "ssh-copy-id" if kind == "auth" else "ssh"
    assert f"`{program} -p 2222 -i {key} pi@board`" in msg


@pytest.mark.hostile(
    "the connection drops mid-session (`closed by remote host`, `Broken pipe`) or ssh exits 255 silently",
    "retried once; then exit 2: 'the connection dropped mid-session' only for a real drop, otherwise "
    "'ssh gave no known reason' with the ssh command to try",
)
def test_only_a_real_drop_is_called_dropped(tmp_path, no_ssh_config):
    backend = remote.RemoteBackend(load_profile(ssh_profile(tmp_path)))
    for stderr in ["Connection to 10.0.0.2 closed by remote host.\n", "client_loop: send disconnect: Broken pipe\n",
                   "Read from remote host board: Connection reset by peer\n"]:
        res = ssh.SshResult(255, b"", stderr, 1.0)
        assert ssh.classify_ssh_stderr(stderr)[0] == "dropped" and backend.ssh.retryable(res)
        msg = str(backend.ssh.fail(res, "measure", "unused"))
        assert "the connection dropped mid-session" in msg and stderr.strip() in msg
    silent = ssh.SshResult(255, b"", "", 1.0)
    assert ssh.classify_ssh_stderr("") == ("unknown", "") and backend.ssh.retryable(silent)
    msg = str(backend.ssh.fail(silent, "measure", "unused"))
    assert "dropped" not in msg and "ssh gave no known reason" in msg and "`ssh pi@board`" in msg
    handshake = ssh.SshResult(255, b"", "kex_exchange_identification: Connection closed by remote host\n", 1.0)
    assert backend.ssh.retryable(handshake)
    assert "during the SSH handshake" in str(backend.ssh.fail(handshake, "measure", "unused"))


@pytest.mark.hostile(
    "profile destination with characters ssh rejects (`pi@bo'ard`), real ssh run",
    "exit 2 saying ssh's 'hostname contains invalid characters' (once, no retry), not 'connection dropped'",
)
def test_invalid_hostname_from_real_ssh_is_not_called_a_drop(tmp_path, monkeypatch):
    if shutil.which("ssh") is None:
        pytest.skip("no OpenSSH client on this machine")
    config = tmp_path / "empty_ssh_config"
    config.write_text("")
    monkeypatch.setenv(ssh.SSH_CONFIG_ENV, str(config))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    backend = remote.RemoteBackend(load_profile(ssh_profile(tmp_path, destination="pi@bo'ard", extra="port = 2222\n")))
    with pytest.raises(DeviceError) as exc:
        backend.facts()
    msg = str(exc.value)
    assert "hostname contains invalid characters" in msg and "dropped" not in msg
    assert f"ssh -F {config} -p 2222 'pi@bo'\"'\"'ard'" in msg  # pasteable: shell-quoted
    assert backend.attempts == [("facts", 255)]


# ---------------------------------------------------------------------------------------------- leftovers


FAST = ["--no-measure", "--verify-images", "100", "--test-limit", "100"]


def tiny_checkpoint(path: Path) -> Path:
    """A VGG-11 at width 0.125 trained on nothing, labelled for Fashion-MNIST (as in test_export_cli)."""
    import torch

    from rlprune_edge.checkpoint import ModelInfo, save_checkpoint
    from rlprune_edge.data import FASHION_MNIST_CLASSES
    from rlprune_edge.models import build_model

    torch.manual_seed(0)
    model = build_model("vgg11", 0.125, 10)
    info = ModelInfo("vgg11", 0.125, 10, (3, 32, 32), (0.219,) * 3, (0.3318,) * 3,
                     list(FASHION_MNIST_CLASSES), meta={"data": "fashion-mnist"})
    return save_checkpoint(path, model, info)


@pytest.mark.hostile(
    "`export` killed with SIGKILL mid-build, then run again into the same parent directory",
    "the killed run's `.NAME.tmp-<pid>-*` is removed at the next run's start; a live process's temp "
    "and anything not ours are left alone",
)
def test_stale_export_temps_are_removed_and_live_ones_kept(tmp_path):
    from rlprune_edge.data import fashion_mnist_dir

    if not (fashion_mnist_dir() / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist not installed (the export verifies on it)")
    ckpt = tiny_checkpoint(tmp_path / "vgg11.pt")
    parent = tmp_path / "out"
    parent.mkdir()
    out = parent / "bundle"
    cmd = [sys.executable, "-m", "rlprune_edge", "export", str(ckpt), "--profile", "host-cpu", "--out", str(out),
           *FAST]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    prefix = f".bundle.tmp-{proc.pid}-"
    deadline = time.monotonic() + 240
    try:
        while not any(p.name.startswith(prefix) for p in parent.iterdir()):
            assert proc.poll() is None, f"export ended before it could be killed: {proc.stderr.read()!r}"
            assert time.monotonic() < deadline, "the export never created its temp directory"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    stale = [p for p in parent.iterdir() if p.name.startswith(prefix)]
    assert len(stale) == 1 and stale[0].is_dir()  # what SIGKILL leaves: named after the dead process
    live = parent / f".bundle.tmp-{os.getpid()}-live0001"  # a run in progress (this process is alive)
    live.mkdir()
    gone = dead_pid()
    stale_old_style = parent / f".bundle.tmp-{gone}-abcd1234"
    stale_old_style.mkdir()
    (stale_old_style / "model.onnx").write_bytes(b"x" * 10)
    foreign = [parent / f".other.tmp-{gone}-abcd1234", parent / ".bundle.tmp-notapid-abcd1234",
               parent / f".bundle.tmp-{gone}", parent / "notes.txt"]
    for f in foreign:
        f.write_text("not ours")

    assert main(["export", str(ckpt), "--profile", "host-cpu", "--out", str(out), *FAST]) == 0
    assert (out / "manifest.json").is_file()
    assert not stale[0].exists() and not stale_old_style.exists()
    assert live.is_dir() and all(f.read_text() == "not ours" for f in foreign)
    left = sorted(p.name for p in parent.iterdir())
    assert left == sorted(["bundle", live.name, *(f.name for f in foreign)])


@pytest.mark.hostile(
    "an atomic file write killed with SIGKILL (temp sibling `.NAME.tmp-<pid>-*` left behind)",
    "the next write of that file removes the dead process's temp; a live one's is kept",
)
def test_atomic_writes_carry_the_pid_and_clean_dead_ones(tmp_path):
    gone = dead_pid()
    stale = tmp_path / f".report.json.tmp-{gone}-abcdefgh.tmp"
    live = tmp_path / f".report.json.tmp-{os.getpid()}-abcdefgh.tmp"
    other = tmp_path / f".other.json.tmp-{gone}-abcdefgh.tmp"
    for f in (stale, live, other):
        f.write_text("{")
    with atomic_path(tmp_path / "report.json") as tmp:
        assert tmp.name.startswith(f".report.json.tmp-{os.getpid()}-")
        tmp.write_text("{}")
    assert not stale.exists() and live.exists() and other.exists()
    atomic_write_json(tmp_path / "other.json", {"a": 1})
    assert not other.exists() and live.exists()


@pytest.mark.hostile(
    "an export killed between moving the previous bundle aside and renaming the new one in",
    "the next run puts the previous bundle (`.NAME.old-<dead pid>-*`) back as NAME instead of deleting it",
)
def test_previous_bundle_moved_aside_by_a_killed_run_is_put_back(tmp_path):
    gone = dead_pid()
    old = tmp_path / f".bundle.old-{gone}-abcdefgh"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    assert remove_stale_temps(tmp_path, "bundle") == [old]
    assert (tmp_path / "bundle" / "manifest.json").is_file() and not old.exists()
    # when NAME exists again, a dead run's moved-aside copy is only a leftover
    old.mkdir()
    assert remove_stale_temps(tmp_path, "bundle") == [old]
    assert not old.exists() and (tmp_path / "bundle" / "manifest.json").is_file()
