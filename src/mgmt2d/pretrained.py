"""Where the ImageNet weights of a backbone come from and where they are kept: one registry.

Each model module declares the pretrained weights of its own backbones (the timm / smp habit):
``segmentation.model`` registers DenseNet121 (smp's encoder), ``classification.model`` any timm
backbone. The trainers ask :func:`resolve_pretrained` for the file behind ``--pretrained
imagenet``; the downloader (``tools.download``) asks :func:`source` how to fetch and check one.
Weights are stored once per backbone as ``PRETRAINED_DIR/<name>_imagenet.safetensors``.

Nothing here imports a model library: a :class:`PretrainedSource` holds the callables its
model module gave it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGENET = "imagenet"


class MissingWeightsError(FileNotFoundError):
    """ImageNet weights absent: the message is one line that says how to get them."""


@dataclass(frozen=True)
class FetchedWeights:
    """What a hub fetcher hands back: the target module's state dict and where it came from."""

    state_dict: dict[str, Any]
    source: dict[str, Any]


@dataclass(frozen=True)
class PretrainedSource:
    """The ImageNet weights of one backbone.

    ``build()`` makes the module the weights load into (``strict=True``; described by
    ``load_into``); ``fetch(cache_dir)`` gets them from the library's own hub (needs the internet,
    only ``download_models.py`` calls it).
    """

    name: str
    load_into: str
    build: Callable[[], Any]
    fetch: Callable[[Path], FetchedWeights]

    @property
    def filename(self) -> str:
        return f"{self.name}_imagenet.safetensors"


_SOURCES: dict[str, PretrainedSource] = {}
_FAMILIES: list[Callable[[str], PretrainedSource | None]] = []   # e.g. "any timm model name"
_DEFAULTS: list[str] = []


def register(source: PretrainedSource, default: bool = False) -> PretrainedSource:
    """Declare ``source``; ``default`` ones are what ``download_models.py`` fetches without --backbone."""
    _SOURCES[source.name] = source
    if default and source.name not in _DEFAULTS:
        _DEFAULTS.append(source.name)
    return source


def register_family(resolver: Callable[[str], PretrainedSource | None]) -> None:
    """Declare a family of backbones by name (a resolver returns None for names it does not know)."""
    if resolver not in _FAMILIES:
        _FAMILIES.append(resolver)


def defaults() -> tuple[str, ...]:
    """The backbones of the reference architecture (what ``download_models.py`` fetches by default)."""
    return tuple(_DEFAULTS)


def source(name: str) -> PretrainedSource:
    """The registered source of backbone ``name``; ValueError for a name no model module knows."""
    if name in _SOURCES:
        return _SOURCES[name]
    for resolver in _FAMILIES:
        found = resolver(name)
        if found is not None:
            return found
    raise ValueError(f"unknown pretrained backbone {name!r}; known: {', '.join(_SOURCES) or 'none registered'} "
                     "(and any timm model with ImageNet weights)")


def weights_path(pretrained_dir: str | Path, name: str) -> Path:
    """Where the ImageNet state dict of ``name`` lives (whether or not it is there yet)."""
    return Path(pretrained_dir) / source(name).filename


def require(pretrained_dir: str | Path, name: str) -> Path:
    """The weights file of ``name``; a one-line error saying how to fetch it when absent."""
    path = weights_path(pretrained_dir, name)
    if not path.is_file():
        fetch = "" if name in _DEFAULTS else f" --backbone {name}"
        raise MissingWeightsError(
            f"ImageNet weights for {name} not found in {Path(pretrained_dir)}: "
            f"run `python download_models.py{fetch}` (needs internet)"
        )
    return path


def add_pretrained_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--pretrained", default=IMAGENET,
        help=f"imagenet (the {what} ImageNet weights in PRETRAINED_DIR), none (random init), or a weights file",
    )


def resolve_pretrained(value: str, pretrained_dir: Path, name: str) -> Path | None:
    """--pretrained imagenet|none|PATH -> a local weights file or None; never a silent random start."""
    if value == "none":
        return None
    if value == IMAGENET:
        return require(pretrained_dir, name)
    path = Path(value).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"--pretrained {value}: no such file (use imagenet, none or a weights file)")
    return path
