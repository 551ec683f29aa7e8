"""Fetch model weights once, on a connected machine, so every later step runs offline.

Two kinds of weights:

* ImageNet weights of the backbones, fetched through the libraries' own hub mechanism as each
  model module declares it in the registry of :mod:`mgmt2d.pretrained` (timm's
  ``create_model(pretrained=True, cache_dir=...)`` for any timm backbone, the Hugging Face
  repository that segmentation-models-pytorch names for its ``densenet121`` encoder), with the
  hub cache kept under ``PRETRAINED_DIR/hub``. The backbone state dicts are then stored in one
  stable format that the segmenter and classifier load without any hub (the reference's two
  by default, another timm backbone with ``--backbone NAME``):

      PRETRAINED_DIR/eca_nfnet_l0_imagenet.safetensors
          state dict of ``timm.create_model("eca_nfnet_l0", pretrained=False, num_classes=0)``
          (183 tensors; the 1000-class ``head.fc`` is dropped)
      PRETRAINED_DIR/densenet121_imagenet.safetensors
          state dict of ``segmentation_models_pytorch.encoders.get_encoder("densenet121")``,
          i.e. of ``UnetPlusPlus(encoder_name="densenet121").encoder`` (725 tensors)
      PRETRAINED_DIR/pretrained.json
          what each file is, its SHA-256, size and source

  Both load with ``safetensors.torch.load_file``
  and ``module.load_state_dict(state_dict)`` with ``strict=True``.

* Trained checkpoints listed in ``models/manifest.json`` (name, url, sha256, destination):
  downloaded by huggingface_hub's HTTP client into ``<destination>.part`` (an interrupted
  download resumes with HTTP Range), verified with SHA-256 and renamed into place only when
  the hash matches.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from mgmt2d import pretrained
from mgmt2d.classification.model import DEFAULT_BACKBONE
from mgmt2d.data.io import atomic_path, file_sha256, write_json_atomic
from mgmt2d.data.settings import Settings, add_settings_argument, load_settings
from mgmt2d.pretrained import FetchedWeights
from mgmt2d.segmentation.model import ENCODER
from mgmt2d.tools.published import main_published

USER_AGENT = "mgmt2d-download/0.1"
PRETRAINED_INDEX = "pretrained.json"
HUB_CACHE = "hub"
INDEX_FORMAT = "mgmt2d-pretrained/1"
MODEL_DIR_KEYS: tuple[str, ...] = ("SEGMENT_MODEL_DIR", "CLASSIFICATION_MODEL_DIR", "PRETRAINED_DIR")
# The reference's backbones, fetched by default (``--backbone NAME`` adds any other timm backbone).
PRETRAINED_NAMES: tuple[str, ...] = (DEFAULT_BACKBONE, ENCODER)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------------------
# Errors and small records
# --------------------------------------------------------------------------------------


class PretrainedError(RuntimeError):
    """Fetched weights that do not fit the backbone they are meant for."""


class ManifestError(ValueError):
    """A malformed models/manifest.json; the message is one line naming the problem."""


@dataclass(frozen=True)
class Result:
    """Outcome for one file: ``ok`` is True only when present and verified."""

    name: str
    path: Path
    status: str  # "present" | "downloaded" | "saved" | "missing" | "failed"
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("present", "downloaded", "saved")


@dataclass(frozen=True)
class ManifestEntry:
    """One trained checkpoint: where to get it, its SHA-256, where it goes."""

    name: str
    url: str
    sha256: str
    destination: str
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------


def verify_file(path: str | Path, sha256: str) -> str | None:
    """None when ``path`` exists with this SHA-256, else a short reason."""
    path = Path(path)
    if not path.is_file():
        return "not found"
    actual = file_sha256(path)
    if actual != sha256.lower():
        return f"sha256 mismatch (expected {sha256.lower()}, found {actual})"
    return None


# --------------------------------------------------------------------------------------
# ImageNet weights: the stable on-disk format other modules load
# --------------------------------------------------------------------------------------


def _read_index(pretrained_dir: Path) -> dict[str, Any]:
    """pretrained.json, or an empty index when missing or unreadable (it is rebuilt on save)."""
    path = pretrained_dir / PRETRAINED_INDEX
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"format": INDEX_FORMAT, "weights": {}}
    if not isinstance(data, dict) or not isinstance(data.get("weights"), dict):
        return {"format": INDEX_FORMAT, "weights": {}}
    return data


def verify_pretrained(pretrained_dir: str | Path, name: str) -> str | None:
    """None when the file of ``name`` exists and matches pretrained.json, else a reason."""
    pretrained_dir = Path(pretrained_dir)
    path = pretrained.weights_path(pretrained_dir, name)
    if not path.is_file():
        return "not found"
    entry = _read_index(pretrained_dir)["weights"].get(name)
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        return f"not recorded in {PRETRAINED_INDEX}"
    return verify_file(path, entry["sha256"])


def save_pretrained(
    pretrained_dir: str | Path,
    name: str,
    fetch: Callable[[Path], FetchedWeights] | None = None,
    *,
    force: bool = False,
) -> Result:
    """Fetch the ImageNet weights of ``name`` (unless already verified), check, store, describe.

    ``fetch`` defaults to the real hub fetcher; tests pass one that needs no network.
    The state dict must load strictly into the target module, so a changed library or a
    wrong checkpoint fails here, not in the middle of training.
    """
    import torch
    from safetensors.torch import save_file

    pretrained_dir = Path(pretrained_dir)
    spec = pretrained.source(name)
    path = pretrained.weights_path(pretrained_dir, name)
    if not force and verify_pretrained(pretrained_dir, name) is None:
        return Result(name, path, "present")

    cache_dir = pretrained_dir / HUB_CACHE
    cache_dir.mkdir(parents=True, exist_ok=True)
    fetched = (fetch or spec.fetch)(cache_dir)

    state = {k: v.detach().to("cpu").contiguous() for k, v in fetched.state_dict.items()}
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedError(f"fetched weights for {name} are not a state dict of tensors")
    target = spec.build()
    try:
        target.load_state_dict(dict(state))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise PretrainedError(f"fetched weights for {name} do not fit {spec.load_into}: {first}") from None

    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "name": name, "load_into": spec.load_into})
    index = _read_index(pretrained_dir)
    index["format"] = INDEX_FORMAT
    index["about"] = (
        "ImageNet backbone weights for mgmt2d, one safetensors state dict per backbone; "
        "load with safetensors.torch.load_file and module.load_state_dict(strict=True)."
    )
    index["weights"][name] = {
        "file": path.name,
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "tensors": len(state),
        "load_into": spec.load_into,
        "source": fetched.source,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(pretrained_dir / PRETRAINED_INDEX, index)
    return Result(name, path, "saved", fetched.source.get("hf_hub_id") or fetched.source.get("hf_repo_id") or "")


def fetch_pretrained(
    pretrained_dir: str | Path,
    names: Iterable[str] = PRETRAINED_NAMES,
    *,
    fetchers: Mapping[str, Callable[[Path], FetchedWeights]] | None = None,
    force: bool = False,
) -> list[Result]:
    """:func:`save_pretrained` for each name; a failure is reported, never raised, so all are tried."""
    results = []
    for name in names:
        fetch = (fetchers or {}).get(name)
        try:
            results.append(save_pretrained(pretrained_dir, name, fetch, force=force))
        except Exception as err:  # noqa: BLE001 - hub libraries raise many types; report them all
            reason = (str(err).strip().splitlines() or [""])[0] or type(err).__name__
            path = pretrained.weights_path(pretrained_dir, name)
            results.append(Result(name, path, "failed", f"{type(err).__name__}: {reason}"))
    return results


def unreachable(url: str, timeout: float = 10.0) -> str | None:
    """None when the server at ``url`` answers (any HTTP status), else why not (proxies honoured)."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout):  # noqa: S310 - http(s) checked by the callers
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as err:
        return str(err.reason)
    except (http.client.HTTPException, OSError) as err:
        return f"{type(err).__name__}: {err}"


def hub_unreachable(endpoint: str | None = None, timeout: float = 10.0) -> str | None:
    """None when the Hugging Face hub answers, else why not.

    huggingface_hub retries an unreachable host for about 40 s per file; one quick request
    first turns "offline" into an immediate, clear message.
    """
    if endpoint is None:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:  # the user wants the local hub cache only: let the fetchers try it
            return None
        endpoint = constants.ENDPOINT
    reason = unreachable(endpoint, timeout)
    return None if reason is None else f"{endpoint} unreachable: {reason}"


def check_pretrained(pretrained_dir: str | Path, names: Iterable[str] = PRETRAINED_NAMES) -> list[Result]:
    """Offline check of the stored ImageNet weights (no network)."""
    results = []
    for name in names:
        problem = verify_pretrained(pretrained_dir, name)
        status = "present" if problem is None else "missing"
        results.append(Result(name, pretrained.weights_path(pretrained_dir, name), status, problem or ""))
    return results


# --------------------------------------------------------------------------------------
# Trained checkpoints: manifest
# --------------------------------------------------------------------------------------


def load_manifest(path: str | Path) -> list[ManifestEntry]:
    """Entries of a manifest: a JSON list, or an object whose ``models`` key holds the list."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} not found; pass --manifest PATH") from None
    except json.JSONDecodeError as err:
        raise ManifestError(f"manifest {path} is not valid JSON: {err}") from None
    items = raw.get("models") if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise ManifestError(f"manifest {path} must be a JSON list or an object with a 'models' list")
    entries: list[ManifestEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"manifest {path} entry {i}"
        if not isinstance(item, dict):
            raise ManifestError(f"{where} must be an object")
        required = ("name", "url", "sha256", "destination")
        missing = [k for k in required if not item.get(k) or not isinstance(item[k], str)]
        if missing:
            raise ManifestError(f"{where} lacks string field(s): {', '.join(missing)}")
        name, url, sha, dest = item["name"], item["url"], item["sha256"].lower(), item["destination"]
        if name in seen:
            raise ManifestError(f"{where}: duplicate name {name!r}")
        seen.add(name)
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ManifestError(f"{where} ({name}): url must be http(s), got {url!r}")
        if not _SHA256_RE.match(sha):
            raise ManifestError(f"{where} ({name}): sha256 must be 64 hex digits")
        _check_destination(dest, f"{where} ({name})")
        extra = {k: v for k, v in item.items() if k not in ("name", "url", "sha256", "destination")}
        entries.append(ManifestEntry(name, url, sha, dest, extra))
    return entries


def _check_destination(dest: str, where: str) -> PurePosixPath:
    rel = PurePosixPath(dest)
    if "\\" in dest or rel.is_absolute() or not rel.parts or ".." in rel.parts:
        raise ManifestError(f"{where}: destination {dest!r} must be a relative path without '..'")
    if rel.parts[0] in MODEL_DIR_KEYS and len(rel.parts) < 2:
        raise ManifestError(f"{where}: destination {dest!r} names a folder, not a file")
    return rel


def resolve_destination(destination: str, settings: Settings) -> Path:
    """``SEGMENT_MODEL_DIR/x.pth`` -> that settings folder; any other relative path -> project root.

    The first component may be SEGMENT_MODEL_DIR, CLASSIFICATION_MODEL_DIR or PRETRAINED_DIR;
    otherwise the path is taken relative to the folder holding SETTINGS.json (the project
    root, against which SETTINGS.json's own relative paths resolve too).
    """
    rel = _check_destination(destination, "destination")
    if rel.parts[0] in MODEL_DIR_KEYS:
        return settings[rel.parts[0]].joinpath(*rel.parts[1:])
    return settings.source.parent.joinpath(*rel.parts)


# --------------------------------------------------------------------------------------
# Trained checkpoints: verified download (the transfer itself is huggingface_hub's)
# --------------------------------------------------------------------------------------


def _transfer(url: str, part: Path, *, name: str, progress: bool) -> None:
    """Append ``url`` to ``part`` from its current size.

    huggingface_hub's ``http_get`` does the HTTP: ``Range: bytes=N-`` for a kept .part, a
    restart when the server ignores Range, and retries of a transfer cut mid-way.
    """
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    offset = part.stat().st_size if part.is_file() else 0
    if not progress:
        disable_progress_bars()
    try:
        with open(part, "ab") as fh:
            http_get(url, fh, resume_size=offset, displayed_filename=name,
                     headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    finally:
        if not progress:
            enable_progress_bars()


def download_file(url: str, dest: str | Path, sha256: str, *, name: str | None = None, progress: bool = True) -> Result:
    """Make ``dest`` hold the file with this SHA-256, downloading (and resuming) only if needed.

    * ``dest`` already verified: nothing is requested.
    * Bytes go to ``<dest>.part``; a later call resumes it (an interrupted run loses nothing).
    * The hash must match before ``os.replace`` puts the file in place; on a mismatch the
      .part is deleted, after one fresh restart when a resumed .part may have been stale.
    """
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    dest = Path(dest)
    sha256 = sha256.lower()
    name = name or dest.name
    stale = ""
    if dest.is_file():
        if file_sha256(dest) == sha256:
            return Result(name, dest, "present")
        stale = "existing file has the wrong sha256 and is kept until a verified copy replaces it; "
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    while True:
        resumed = part.is_file() and part.stat().st_size > 0
        try:
            _transfer(url, part, name=name, progress=progress)
        except HfHubHTTPError as err:
            status = err.response.status_code if err.response is not None else None
            if not (status == 416 and resumed):  # 416 on a resume: the .part may be whole; the hash decides
                if part.is_file() and part.stat().st_size == 0:
                    part.unlink()
                return Result(name, dest, "failed", stale + f"HTTP {status} for {url}")
        except (httpx2.HTTPError, OSError) as err:
            have = part.stat().st_size if part.is_file() else 0
            if have == 0:
                part.unlink(missing_ok=True)
                return Result(name, dest, "failed", stale + f"cannot download {url}: {type(err).__name__}: {err}")
            return Result(
                name, dest, "failed",
                stale + f"transfer interrupted at {have} bytes ({type(err).__name__}); {part.name} kept, "
                "run again to resume",
            )
        digest = file_sha256(part)
        if digest == sha256:
            os.replace(part, dest)
            return Result(name, dest, "downloaded")
        part.unlink()
        if not resumed:
            return Result(name, dest, "failed",
                          stale + f"sha256 mismatch (expected {sha256}, got {digest}); download deleted")
        # the kept .part may predate a change on the server: one fresh download


def fetch_manifest(
    entries: Sequence[ManifestEntry], settings: Settings, *, progress: bool = True, timeout: float = 10.0,
) -> list[Result]:
    """Download every manifest entry not already present and verified.

    Each host is asked once first, so an offline machine fails at once instead of after the
    library's retries.
    """
    hosts: dict[str, str | None] = {}
    results = []
    for e in entries:
        dest = resolve_destination(e.destination, settings)
        parts = urllib.parse.urlsplit(e.url)
        host = f"{parts.scheme}://{parts.netloc}"
        if verify_file(dest, e.sha256) is not None and host not in hosts:
            hosts[host] = unreachable(host, timeout=timeout)
        if hosts.get(host):
            results.append(Result(e.name, dest, "failed", f"cannot reach {parts.hostname}: {hosts[host]}"))
            continue
        results.append(download_file(e.url, dest, e.sha256, name=e.name, progress=progress))
    return results


def check_manifest(entries: Sequence[ManifestEntry], settings: Settings) -> list[Result]:
    """Offline check of manifest entries (no network)."""
    results = []
    for e in entries:
        dest = resolve_destination(e.destination, settings)
        problem = verify_file(dest, e.sha256)
        results.append(Result(e.name, dest, "present" if problem is None else "missing", problem or ""))
    return results


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


DESCRIPTION = (
    "Fetch ImageNet backbone weights (into PRETRAINED_DIR) and the trained checkpoints "
    "listed in the manifest. Run once on a machine with internet; exit 0 when every "
    "file is present and verified, 1 otherwise."
)


def add_arguments(parser: argparse.ArgumentParser, default_manifest: str | Path | None = None) -> None:
    """The flags of download_models.py; ``default_manifest`` is the script's own models/manifest.json
    (without one: models/manifest.json beside SETTINGS.json)."""
    add_settings_argument(parser)
    parser.add_argument(
        "--manifest", type=Path, default=default_manifest,
        help="trained-checkpoint manifest (default: models/manifest.json beside download_models.py)",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--pretrained-only", action="store_true", help="only the ImageNet backbone weights")
    only.add_argument("--trained-only", action="store_true", help="only the manifest's trained checkpoints")
    parser.add_argument(
        "--offline-check", action="store_true",
        help="download nothing: check that every file is present with the right SHA-256",
    )
    parser.add_argument("--force", action="store_true", help="re-fetch ImageNet weights even when present")
    parser.add_argument("--backbone", nargs="+", default=[], metavar="NAME",
                        help="also fetch these timm backbones' ImageNet weights (default: "
                             f"{', '.join(PRETRAINED_NAMES)}), for train_classification.py --backbone NAME")
    parser.add_argument(
        "--published", choices=["t4e"],
        help="fetch the published solution's released weights (Google Drive, via gdown) instead; "
             "SHA-256 recorded in <manifest folder>/<name>.lock.json on first download, verified after",
    )
    parser.add_argument(
        "--published-dir", type=Path, help="where --published puts them (default <manifest folder>/<name>)"
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0,
        help="seconds to wait for a server's first answer before calling it unreachable (default 10); "
             "the transfer's own timeout is huggingface_hub's (HF_HUB_DOWNLOAD_TIMEOUT)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser(default_manifest: str | Path | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="download_models.py", description=DESCRIPTION)
    add_arguments(parser, default_manifest)
    return parser


def _report(results: Sequence[Result], *, offline: bool) -> int:
    for r in results:
        if r.ok:
            print(f"ok       {r.name}: {r.path} ({r.status})")
    bad = [r for r in results if not r.ok]
    if not results:
        print("nothing to fetch or check")
        return 0
    if not bad:
        print(f"all {len(results)} file(s) present and verified")
        return 0
    print(f"error: {len(bad)} of {len(results)} file(s) missing or unverified:", file=sys.stderr)
    for r in bad:
        print(f"  - {r.name}: {r.path}: {r.message}", file=sys.stderr)
    if offline:
        print("run `python download_models.py` on a machine with internet and copy the model folders here",
              file=sys.stderr)
    elif any(word in r.message for r in bad for word in ("unreachable", "cannot reach", "interrupted")):
        print("no internet? run this on a connected machine and copy the model folders (see README); "
              "an interrupted download resumes when run again", file=sys.stderr)
    return 1


def main(args: argparse.Namespace) -> int:
    """Entry point of download_models.py; returns the exit code (0 all verified, 1 otherwise). Bad
    settings or a bad manifest raise (one line and exit 2 through ``mgmt2d.cli.run``)."""
    settings = load_settings(args.settings)
    names = tuple(dict.fromkeys([*PRETRAINED_NAMES, *args.backbone]))
    progress = not args.no_progress
    results: list[Result] = []
    manifest = Path(args.manifest) if args.manifest else settings.source.parent / "models" / "manifest.json"
    if args.published:
        dest = args.published_dir or manifest.parent / args.published
        return main_published(args.published, dest, manifest.parent / f"{args.published}.lock.json")

    if not args.trained_only:
        pretrained_dir = settings["PRETRAINED_DIR"]
        if args.offline_check:
            results += check_pretrained(pretrained_dir, names)
        else:
            print(f"ImageNet weights -> {pretrained_dir}")
            todo = [n for n in names if args.force or verify_pretrained(pretrained_dir, n) is not None]
            offline = hub_unreachable(timeout=args.timeout) if todo else None
            if offline:
                results += [r for r in check_pretrained(pretrained_dir, names) if r.ok]
                results += [Result(n, pretrained.weights_path(pretrained_dir, n), "failed", offline) for n in todo]
            else:
                results += fetch_pretrained(pretrained_dir, names, force=args.force)

    if not args.pretrained_only:
        entries = load_manifest(manifest)
        if not entries:
            print(f"{manifest} lists no trained checkpoints (none published yet)")
        elif args.offline_check:
            results += check_manifest(entries, settings)
        else:
            print(f"trained checkpoints ({len(entries)}) from {manifest}")
            results += fetch_manifest(entries, settings, progress=progress, timeout=args.timeout)

    return _report(results, offline=args.offline_check)
