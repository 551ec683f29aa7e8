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
