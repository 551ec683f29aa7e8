"""``--device auto|cpu|cuda[:N]``: one rule for every script."""

from __future__ import annotations

import argparse

import torch


class DeviceError(ValueError):
    """A --device the machine cannot honour; one line, exit status 2 (cli.run)."""


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a --device value into a torch.device; a CUDA request without CUDA is an error."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec} asked for CUDA but no CUDA device is available; use --device cpu")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise DeviceError(f"--device {spec!r} not understood; use auto, cpu or cuda[:N]")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, or cuda[:N]")


# The one mixed-precision policy of the package: fp16 autocast on CUDA where a stage enables it
# (training: --amp, default on; inference classifier: default on, --no-amp off; stage-2 segmenter:
# off, as published, --seg-amp on), fp32 everywhere else. Run configs record the result.
AMP_DTYPE = torch.float16


def autocast_dtype(device: torch.device | str, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype for ``device`` (fp16 on CUDA when ``enabled``), None for fp32."""
    return AMP_DTYPE if enabled and torch.device(device).type == "cuda" else None


def autocast(device: torch.device | str, enabled: bool = True) -> torch.autocast:
    """``torch.autocast`` as :func:`autocast_dtype` decides (a disabled context when it says fp32)."""
    device = torch.device(device)
    dtype = autocast_dtype(device, enabled)
    return torch.autocast(device_type=device.type, dtype=dtype or AMP_DTYPE, enabled=dtype is not None)


def autocast_name(device: torch.device | str, enabled: bool = True) -> str:
    """What a run config records: "float16" (autocast) or "none" (fp32)."""
    dtype = autocast_dtype(device, enabled)
    return "float16" if dtype is not None else "none"
