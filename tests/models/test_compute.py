"""Precision and memory layout: which precision a device gets, and what a device refuses."""

from pathlib import Path

import pytest
import torch

from microal.errors import ConfigError
from microal.models.compute import autocast, channels_last, cpu_has_native_bf16, grad_scaler, resolve_precision


def test_auto_takes_bf16_only_where_the_cpu_computes_it_natively():
    assert resolve_precision("auto", "cpu", cpu_bf16=False) == "fp32"
    assert resolve_precision("auto", "cpu", cpu_bf16=True) == "bf16"
    # An explicit choice is kept: bf16 runs (emulated) on any CPU, fp32 anywhere.
    assert resolve_precision("bf16", "cpu", cpu_bf16=False) == "bf16"
    assert resolve_precision("fp32", "cpu", cpu_bf16=True) == "fp32"


def test_native_bf16_agrees_with_the_cpu_flags_the_kernel_reports():
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    flags_lines = [line for line in lines if line.startswith("flags")]
    if not flags_lines:
        pytest.skip("no /proc/cpuinfo flags on this system")
    flags = set(flags_lines[0].split(":", 1)[1].split())
    assert cpu_has_native_bf16() == bool(flags & {"amx_bf16", "avx512_bf16"})


def test_fp16_on_a_cpu_and_unknown_names_are_refused_clearly():
    with pytest.raises(ConfigError, match="training.precision: fp16 needs a CUDA device .* use bf16 or fp32"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match=r"unknown precision 'fp8'; valid: \['auto', 'fp32', 'bf16', 'fp16'\]"):
        resolve_precision("fp8", "cpu")


def test_autocast_runs_convolutions_in_bf16_and_fp32_is_untouched():
    conv = torch.nn.Conv2d(1, 4, 3)
    x = torch.randn(2, 1, 16, 16)
    with autocast("cpu", "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert conv(x).dtype == torch.float32
    assert not grad_scaler("cpu", "bf16").is_enabled()  # bf16 needs no loss scaling


def test_channels_last_keeps_the_values_and_the_state_dict_loads_anywhere():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3))
    x = torch.randn(2, 1, 20, 20)
    expected = net(x)
    fast = channels_last(net)
    assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(x), expected, rtol=1e-5, atol=1e-5)
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3))
    plain.load_state_dict(fast.state_dict())
    torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
