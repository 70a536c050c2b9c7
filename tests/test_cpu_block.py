"""channel_multiple = "auto": the CPU's conv channel block, read from its flags, for local CPU runtimes only."""

from __future__ import annotations

import pytest

from rlprune_edge.cli import main
from rlprune_edge.cpu_block import channel_block, cpu_flags, host_channel_block
from rlprune_edge.errors import UserError
from rlprune_edge.profiles import load_profile

X86_AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma\n\nprocessor\t: 1\n"
X86_AVX512 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\nCPU part\t: 0xd08\n"


def test_flags_are_read_from_cpuinfo_text():
    assert {"avx2", "fma"} <= cpu_flags(X86_AVX2) and "avx512f" not in cpu_flags(X86_AVX2)
    assert "avx512f" in cpu_flags(X86_AVX512)
    assert "asimd" in cpu_flags(ARM)
    assert cpu_flags("processor : 0\n") == frozenset()


@pytest.mark.parametrize(("machine", "text", "multiple"), [
    ("x86_64", X86_AVX512, 16), ("x86_64", X86_AVX2, 8), ("AMD64", X86_AVX2, 8),
    ("aarch64", ARM, 4), ("armv7l", ARM, 4), ("riscv64", "", 8),
])
def test_block_follows_the_cpu(machine, text, multiple):
    block = channel_block(machine, cpu_flags(text) or None)
    assert block.multiple == multiple
    assert block.basis.startswith("auto: ")


def test_unreadable_x86_flags_fall_back_to_the_smaller_block(tmp_path):
    assert channel_block("x86_64", None).multiple == 8
    missing = host_channel_block(tmp_path / "no-cpuinfo")
    assert missing.multiple in (4, 8) and "auto" in missing.basis


def _profile(tmp_path, body: str) -> str:
    f = tmp_path / "p.toml"
    f.write_text('name = "p"\n' + body)
    return str(f)


def test_auto_resolves_to_this_cpus_block_and_says_why(tmp_path):
    here = host_channel_block()
    for runtime in ('name = "onnxruntime"', 'name = "torch"\ndevice = "cpu"'):
        p = load_profile(_profile(tmp_path, f'[runtime]\n{runtime}\n[pruning]\nchannel_multiple = "auto"\n'))
        assert (p.pruning.channel_multiple, p.pruning.basis) == (here.multiple, here.basis)
    for name in ("host-cpu", "cpu-torch"):  # shipped at a fixed 16 (measured reasons in host-cpu.toml)
        assert (load_profile(name).pruning.channel_multiple, load_profile(name).pruning.basis) == (16, "")
    fixed = load_profile(_profile(tmp_path, '[runtime]\nname = "onnxruntime"\n[pruning]\nchannel_multiple = 12\n'))
    assert (fixed.pruning.channel_multiple, fixed.pruning.basis) == (12, "")


@pytest.mark.parametrize(("body", "needle"), [
    ('[runtime]\nname = "onnxruntime"\n[connection]\nkind = "ssh"\ndestination = "pi@h"\n'
     '[pruning]\nchannel_multiple = "auto"\n', "needs a local CPU runtime"),
    ('[runtime]\nname = "tensorrt"\n[pruning]\nchannel_multiple = "auto"\n', "needs a local CPU runtime"),
    ('[runtime]\nname = "torch"\ndevice = "cuda"\n[pruning]\nchannel_multiple = "auto"\n', "needs a local CPU runtime"),
    ('[runtime]\nname = "onnxruntime"\n[pruning]\nchannel_multiple = "fast"\n', 'must be an integer or "auto"'),
    ('[runtime]\nname = "onnxruntime"\n[pruning]\nbasis = "mine"\n', "basis is not a known key"),
])
def test_auto_is_refused_where_it_cannot_read_the_device(tmp_path, body, needle):
    with pytest.raises(UserError) as exc:
        load_profile(_profile(tmp_path, body))
    assert needle in str(exc.value) and "p.toml: [pruning]" in str(exc.value)


def test_profiles_show_prints_the_basis_as_a_comment(tmp_path, capsys):
    path = _profile(tmp_path, '[runtime]\nname = "onnxruntime"\n[pruning]\nchannel_multiple = "auto"\n')
    assert main(["profiles", "show", path]) == 0
    out = capsys.readouterr().out
    assert f"channel_multiple = {host_channel_block().multiple}" in out
    assert "  # auto: " in out and "basis =" not in out
