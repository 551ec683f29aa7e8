"""download.py against a local HTTP server on 127.0.0.1 only; hub fetchers replaced by fakes.

Nothing here reaches the internet: the server runs a bounded request loop in a thread
and stops by itself; the "offline" case uses a closed local port.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from mgmt2d import pretrained
from mgmt2d.data.io import file_sha256
from mgmt2d.data.settings import KEYS, load_settings
from mgmt2d.tools import download as dl

REPO = Path(__file__).resolve().parents[1]


def _main(argv: list[str]) -> int:
    """download_models.py's main on a command line (its exit status for missing files: 1)."""
    return dl.main(dl.build_parser().parse_args(argv))


# --------------------------------------------------------------------------------------
# A tiny Range-capable HTTP server
# --------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-``; can cut a transfer half-way."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_HEAD(self) -> None:
        self.server.log.append((self.command, self.path, self.headers.get("Range")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        srv = self.server
        srv.log.append((self.command, self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and not srv.ignore_range:
            assert rng.startswith("bytes=") and rng.endswith("-"), rng
            start = int(rng[len("bytes="):-1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if self.path in srv.cut_once:
            srv.cut_once.discard(self.path)
            self.wfile.write(payload[: len(body) // 2 - start])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


class _Server(http.server.HTTPServer):
    """HTTPServer whose loop ends on its own after ``lifetime`` seconds or ``max_requests``."""

    def __init__(self, files: dict[str, bytes], lifetime: float = 60.0, max_requests: int = 50) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.log: list[tuple[str, str, str | None]] = []
        self.cut_once: set[str] = set()
        self.ignore_range = False
        self.timeout = 0.05
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._max = max_requests
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def _loop(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline and len(self.log) < self._max:
            self.handle_request()

    def __enter__(self) -> _Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.server_close()

    def gets(self) -> list[tuple[str, str, str | None]]:
        return [entry for entry in self.log if entry[0] == "GET"]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy in the environment must not capture 127.0.0.1 traffic."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture()
def payload() -> bytes:
    return os.urandom(300_000)


@pytest.fixture()
def server(payload: bytes) -> Iterator[_Server]:
    with _Server({"/ckpt.pth": payload, "/other.pth": payload[::-1]}) as srv:
        yield srv


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _settings_file(root: Path) -> Path:
    values = {key: f"data/{key.lower()}" for key in KEYS}
    values.update(
        SEGMENT_MODEL_DIR="models/segmentation",
        CLASSIFICATION_MODEL_DIR="models/classification",
        PRETRAINED_DIR="models/pretrained",
    )
    path = root / "SETTINGS.json"
    path.write_text(json.dumps(values))
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --------------------------------------------------------------------------------------
# download_file
# --------------------------------------------------------------------------------------


def test_good_hash_downloads_into_place(tmp_path: Path, server: _Server, payload: bytes) -> None:
    dest = tmp_path / "seg" / "ckpt.pth"
    result = dl.download_file(f"{server.base}/ckpt.pth", dest, _sha(payload), progress=False)
    assert result.status == "downloaded" and result.ok
    assert dest.read_bytes() == payload
    assert _leftovers(dest.parent) == ["ckpt.pth"]


def test_bad_hash_leaves_no_file(tmp_path: Path, server: _Server) -> None:
    dest = tmp_path / "ckpt.pth"
    result = dl.download_file(f"{server.base}/ckpt.pth", dest, "0" * 64, progress=False)
    assert not result.ok and "sha256 mismatch" in result.message
    assert _leftovers(tmp_path) == []


def test_kept_part_is_resumed_by_the_next_call(tmp_path: Path, server: _Server, payload: bytes) -> None:
    """What an interrupted run leaves (half the bytes in .part) is resumed, not fetched again."""
    dest = tmp_path / "ckpt.pth"
    part = tmp_path / "ckpt.pth.part"
    part.write_bytes(payload[: len(payload) // 2])
    result = dl.download_file(f"{server.base}/ckpt.pth", dest, _sha(payload), progress=False)
    assert result.status == "downloaded"
    assert dest.read_bytes() == payload and not part.exists()
    assert [r for _, _, r in server.gets()] == [f"bytes={len(payload) // 2}-"]


def test_cut_transfer_is_retried_within_one_call(tmp_path: Path, server: _Server, payload: bytes) -> None:
    """A connection closed mid-body is retried by the library (resumed from what reached the
    file: huggingface_hub writes in 10 MB blocks, so here from 0) and still verified."""
    server.cut_once.add("/ckpt.pth")
    dest = tmp_path / "ckpt.pth"
    result = dl.download_file(f"{server.base}/ckpt.pth", dest, _sha(payload), progress=False)
    assert result.status == "downloaded" and dest.read_bytes() == payload
    assert len(server.gets()) == 2
    assert _leftovers(tmp_path) == ["ckpt.pth"]


def test_failed_transfer_keeps_the_part_for_the_next_run(tmp_path: Path, payload: bytes) -> None:
    """Server gone while a .part exists: the bytes are kept and the message says how to resume."""
    dest = tmp_path / "ckpt.pth"
    part = tmp_path / "ckpt.pth.part"
    part.write_bytes(payload[:1000])
    result = dl.download_file(f"http://127.0.0.1:{_closed_port()}/ckpt.pth", dest, _sha(payload), progress=False)
    assert result.status == "failed" and "interrupted at 1000 bytes" in result.message and "resume" in result.message
    assert part.read_bytes() == payload[:1000] and not dest.exists()


def test_verified_file_is_skipped_without_a_request(tmp_path: Path, server: _Server, payload: bytes) -> None:
    dest = tmp_path / "ckpt.pth"
    dest.write_bytes(payload)
    result = dl.download_file(f"{server.base}/ckpt.pth", dest, _sha(payload), progress=False)
    assert result.status == "present"
    assert server.log == []


def test_wrong_existing_file_is_replaced(tmp_path: Path, server: _Server, payload: bytes) -> None:
    dest = tmp_path / "ckpt.pth"
    dest.write_bytes(b"old checkpoint")
    result = dl.download_file(f"{server.base}/ckpt.pth", dest, _sha(payload), progress=False)
    assert result.status == "downloaded" and dest.read_bytes() == payload
    assert _leftovers(tmp_path) == ["ckpt.pth"]


def test_stale_part_is_discarded_and_fetched_afresh(tmp_path: Path, server: _Server, payload: bytes) -> None:
    dest = tmp_path / "ckpt.pth"
    (tmp_path / "ckpt.pth.part").write_bytes(os.urandom(1000))
    result = dl.download_file(f"{server.base}/ckpt.pth", dest, _sha(payload), progress=False)
    assert result.status == "downloaded" and dest.read_bytes() == payload
    assert [r for _, _, r in server.gets()] == ["bytes=1000-", None]


def test_server_ignoring_range_restarts_from_zero(tmp_path: Path, server: _Server, payload: bytes) -> None:
    server.ignore_range = True
    dest = tmp_path / "ckpt.pth"
    (tmp_path / "ckpt.pth.part").write_bytes(payload[:5000])
    result = dl.download_file(f"{server.base}/ckpt.pth", dest, _sha(payload), progress=False)
    assert result.status == "downloaded" and dest.read_bytes() == payload
    assert len(server.gets()) == 1


def test_complete_part_answered_416_is_finished(tmp_path: Path, server: _Server, payload: bytes) -> None:
    dest = tmp_path / "ckpt.pth"
    (tmp_path / "ckpt.pth.part").write_bytes(payload)
    result = dl.download_file(f"{server.base}/ckpt.pth", dest, _sha(payload), progress=False)
    assert result.status == "downloaded" and dest.read_bytes() == payload
    assert _leftovers(tmp_path) == ["ckpt.pth"]


def test_http_404_is_reported(tmp_path: Path, server: _Server) -> None:
    result = dl.download_file(f"{server.base}/nope.pth", tmp_path / "x.pth", "a" * 64, progress=False)
    assert not result.ok and "HTTP 404" in result.message
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------
# Manifest and command line (trained checkpoints)
# --------------------------------------------------------------------------------------


def _manifest(path: Path, base: str, payload: bytes) -> Path:
    entries = [
        {"name": "seg", "url": f"{base}/ckpt.pth", "sha256": _sha(payload),
         "destination": "SEGMENT_MODEL_DIR/fold0.pth"},
        {"name": "clf", "url": f"{base}/other.pth", "sha256": _sha(payload[::-1]),
         "destination": "CLASSIFICATION_MODEL_DIR/T1wCE/fold0.pth"},
    ]
    path.write_text(json.dumps({"models": entries}))
    return path


def test_cli_downloads_then_offline_check(tmp_path: Path, server: _Server, payload: bytes,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings_file(tmp_path)
    manifest = _manifest(tmp_path / "manifest.json", server.base, payload)
    args = ["--settings", str(settings), "--manifest", str(manifest), "--trained-only", "--no-progress"]
    assert _main(args) == 0
    seg = tmp_path / "models" / "segmentation" / "fold0.pth"
    clf = tmp_path / "models" / "classification" / "T1wCE" / "fold0.pth"
    assert seg.read_bytes() == payload and clf.read_bytes() == payload[::-1]

    requests = len(server.log)
    assert _main(args) == 0  # second run: everything verified, nothing requested
    assert len(server.log) == requests
    assert _main(args + ["--offline-check"]) == 0
    clf.write_bytes(b"corrupt")
    capsys.readouterr()
    assert _main(args + ["--offline-check"]) == 1
    err = capsys.readouterr().err
    assert "clf" in err and "sha256 mismatch" in err and "seg" not in err.split("missing or unverified", 1)[1]


def test_cli_offline_lists_missing_and_exits_1(tmp_path: Path, payload: bytes,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings_file(tmp_path)
    manifest = _manifest(tmp_path / "manifest.json", f"http://127.0.0.1:{_closed_port()}", payload)
    code = _main(["--settings", str(settings), "--manifest", str(manifest), "--trained-only", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "2 of 2 file(s) missing" in err
    assert "seg:" in err and "clf:" in err and "cannot reach 127.0.0.1" in err
    assert _leftovers(tmp_path / "models") == []


def test_shipped_manifest_is_valid_and_empty() -> None:
    assert dl.load_manifest(REPO / "models" / "manifest.json") == []


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"name": "a", "url": "ftp://h/x", "sha256": "a" * 64, "destination": "x.pth"}, "http(s)"),
        ({"name": "a", "url": "file:///etc/passwd", "sha256": "a" * 64, "destination": "x.pth"}, "http(s)"),
        ({"name": "a", "url": "http://h/x", "sha256": "abc", "destination": "x.pth"}, "64 hex"),
        ({"name": "a", "url": "http://h/x", "sha256": "a" * 64, "destination": "/etc/x"}, "relative"),
        ({"name": "a", "url": "http://h/x", "sha256": "a" * 64, "destination": "models/../../x"}, "relative"),
        ({"name": "a", "url": "http://h/x", "sha256": "a" * 64, "destination": "SEGMENT_MODEL_DIR"}, "folder"),
        ({"name": "a", "url": "http://h/x", "sha256": "a" * 64}, "destination"),
    ],
)
def test_manifest_rejects_bad_entries(tmp_path: Path, entry: dict[str, str], complaint: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps([entry]))
    with pytest.raises(dl.ManifestError, match=re.escape(complaint)):
        dl.load_manifest(path)


def test_manifest_rejects_duplicate_names(tmp_path: Path) -> None:
    entry = {"name": "a", "url": "http://h/x", "sha256": "a" * 64, "destination": "x.pth"}
    path = tmp_path / "m.json"
    path.write_text(json.dumps([entry, entry]))
    with pytest.raises(dl.ManifestError, match="duplicate"):
        dl.load_manifest(path)


def test_resolve_destination(tmp_path: Path) -> None:
    settings = load_settings(_settings_file(tmp_path))
    assert dl.resolve_destination("PRETRAINED_DIR/a/b.pth", settings) == settings["PRETRAINED_DIR"] / "a" / "b.pth"
    assert dl.resolve_destination("models/extra.pth", settings) == tmp_path / "models" / "extra.pth"


# --------------------------------------------------------------------------------------
# ImageNet weights
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_weights() -> dict[str, dict[str, torch.Tensor]]:
    """Random-init state dicts of both target modules: what a fake hub hands back."""
    torch.manual_seed(0)
    return {name: pretrained.source(name).build().state_dict() for name in dl.PRETRAINED_NAMES}


def _fake_fetcher(state: dict[str, torch.Tensor], calls: list[Path]) -> Any:
    def fetch(cache_dir: Path) -> pretrained.FetchedWeights:
        calls.append(cache_dir)
        return pretrained.FetchedWeights(state, {"hf_hub_id": "fake/repo"})

    return fetch


@pytest.mark.parametrize("name", ["eca_nfnet_l0", "densenet121"])
def test_save_pretrained_with_fake_fetcher(tmp_path: Path, name: str,
                                           random_weights: dict[str, dict[str, torch.Tensor]]) -> None:
    from safetensors.torch import load_file

    calls: list[Path] = []
    state = random_weights[name]
    result = dl.save_pretrained(tmp_path, name, _fake_fetcher(state, calls))
    assert result.status == "saved" and calls == [tmp_path / "hub"]

    path = pretrained.require(tmp_path, name)
    assert path == pretrained.weights_path(tmp_path, name) == tmp_path / f"{name}_imagenet.safetensors"
    index = json.loads((tmp_path / "pretrained.json").read_text())
    entry = index["weights"][name]
    assert entry["file"] == path.name and entry["sha256"] == file_sha256(path)
    assert entry["tensors"] == len(state) and entry["source"] == {"hf_hub_id": "fake/repo"}
    assert dl.verify_pretrained(tmp_path, name) is None

    loaded = load_file(path)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    target = pretrained.source(name).build()
    target.load_state_dict(load_file(path))  # strict

    # verified: a second call fetches nothing
    assert dl.save_pretrained(tmp_path, name, _fake_fetcher(state, calls)).status == "present"
    assert len(calls) == 1

    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    assert "sha256 mismatch" in (dl.verify_pretrained(tmp_path, name) or "")
    assert "sha256 mismatch" in (dl.check_pretrained(tmp_path, [name])[0].message)


def test_both_backbones_share_one_index(tmp_path: Path, random_weights: dict[str, dict[str, torch.Tensor]]) -> None:
    fetchers = {n: _fake_fetcher(random_weights[n], []) for n in dl.PRETRAINED_NAMES}
    results = dl.fetch_pretrained(tmp_path, fetchers=fetchers)
    assert [r.status for r in results] == ["saved", "saved"]
    index = json.loads((tmp_path / "pretrained.json").read_text())
    assert sorted(index["weights"]) == sorted(dl.PRETRAINED_NAMES)
    assert all(r.ok for r in dl.check_pretrained(tmp_path))


def test_timm_loads_the_stored_file_through_its_own_file_source(
    tmp_path: Path, random_weights: dict[str, dict[str, torch.Tensor]]
) -> None:
    import timm

    dl.save_pretrained(tmp_path, "eca_nfnet_l0", _fake_fetcher(random_weights["eca_nfnet_l0"], []))
    path = pretrained.weights_path(tmp_path, "eca_nfnet_l0")
    model = timm.create_model("eca_nfnet_l0", pretrained=True, num_classes=0,
                              pretrained_cfg_overlay={"file": str(path)})
    stem = "stem.conv1.weight"
    assert torch.equal(model.state_dict()[stem], random_weights["eca_nfnet_l0"][stem])


def test_wrong_state_dict_is_refused_and_nothing_written(
    tmp_path: Path, random_weights: dict[str, dict[str, torch.Tensor]]
) -> None:
    state = dict(random_weights["eca_nfnet_l0"])
    state.pop("stem.conv1.weight")
    with pytest.raises(dl.PretrainedError, match="do not fit"):
        dl.save_pretrained(tmp_path, "eca_nfnet_l0", _fake_fetcher(state, []))
    assert not pretrained.weights_path(tmp_path, "eca_nfnet_l0").exists()
    assert not (tmp_path / "pretrained.json").exists()


def test_failing_hub_is_reported_not_raised(tmp_path: Path) -> None:
    def unreachable(cache_dir: Path) -> pretrained.FetchedWeights:
        raise ConnectionError("huggingface.co unreachable\nmore detail")

    results = dl.fetch_pretrained(tmp_path, ["densenet121"], fetchers={"densenet121": unreachable})
    assert results[0].status == "failed"
    assert results[0].message == "ConnectionError: huggingface.co unreachable"


def test_require_pretrained_error_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(pretrained.MissingWeightsError) as info:
        pretrained.require(tmp_path, "densenet121")
    assert str(info.value) == (
        f"ImageNet weights for densenet121 not found in {tmp_path}: "
        "run `python download_models.py` (needs internet)"
    )
    with pytest.raises(ValueError, match="unknown pretrained backbone"):
        pretrained.weights_path(tmp_path, "not_a_backbone")


def test_real_fetchers_call_the_hub_with_the_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, random_weights: dict[str, dict[str, torch.Tensor]]
) -> None:
    """The hub functions (timm's and smp's) are replaced; the rest of the real code path runs."""
    import huggingface_hub
    import timm
    import timm.models._hub as timm_hub
    from huggingface_hub.errors import EntryNotFoundError
    from safetensors.torch import load_file, save_file

    torch.manual_seed(1)
    full_nfnet = timm.create_model("eca_nfnet_l0", pretrained=False).state_dict()  # with its 1000-class head
    files = {
        "timm/eca_nfnet_l0.ra2_in1k": tmp_path / "nfnet.safetensors",
        "smp-hub/densenet121.imagenet": tmp_path / "densenet.safetensors",
    }
    save_file(full_nfnet, str(files["timm/eca_nfnet_l0.ra2_in1k"]))
    save_file(random_weights["densenet121"], str(files["smp-hub/densenet121.imagenet"]))
    (tmp_path / "config.json").write_text("{}")
    calls: list[tuple[str, str, Any]] = []

    def fake_hf_hub_download(repo_id: str, filename: str, **kwargs: Any) -> str:
        calls.append((repo_id, filename, kwargs.get("cache_dir")))
        if filename == "config.json":
            return str(tmp_path / "config.json")
        if not filename.endswith(".safetensors"):
            raise EntryNotFoundError(filename)
        return str(files[repo_id])

    monkeypatch.setattr(timm_hub, "hf_hub_download", fake_hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)

    out = tmp_path / "pretrained"
    results = dl.fetch_pretrained(out)
    assert [r.status for r in results] == ["saved", "saved"], [r.message for r in results]
    assert {c[2] for c in calls} == {out / "hub"}
    assert {c[0] for c in calls} == set(files)

    nfnet = load_file(pretrained.weights_path(out, "eca_nfnet_l0"))
    assert "head.fc.weight" not in nfnet and len(nfnet) == len(random_weights["eca_nfnet_l0"])
    assert torch.equal(nfnet["stem.conv1.weight"], full_nfnet["stem.conv1.weight"])
    densenet = load_file(pretrained.weights_path(out, "densenet121"))
    assert all(torch.equal(densenet[k], v) for k, v in random_weights["densenet121"].items())
    index = json.loads((out / "pretrained.json").read_text())
    assert index["weights"]["densenet121"]["source"]["hf_repo_id"] == "smp-hub/densenet121.imagenet"
    assert index["weights"]["eca_nfnet_l0"]["source"]["hf_hub_id"] == "timm/eca_nfnet_l0.ra2_in1k"


def test_hub_unreachable(server: _Server) -> None:
    assert dl.hub_unreachable(server.base, timeout=5) is None
    reason = dl.hub_unreachable(f"http://127.0.0.1:{_closed_port()}", timeout=5)
    assert reason is not None and "unreachable" in reason


def test_cli_pretrained_with_fake_hub_then_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    random_weights: dict[str, dict[str, torch.Tensor]],
) -> None:
    settings = _settings_file(tmp_path)
    args = ["--settings", str(settings), "--pretrained-only", "--no-progress"]

    monkeypatch.setattr(dl, "hub_unreachable", lambda **_: "https://huggingface.co unreachable: no route")
    assert _main(args) == 1
    err = capsys.readouterr().err
    assert "eca_nfnet_l0:" in err and "densenet121:" in err and "unreachable" in err
    assert _main(args + ["--offline-check"]) == 1

    monkeypatch.setattr(dl, "hub_unreachable", lambda **_: None)
    for name in dl.PRETRAINED_NAMES:
        spec = dataclasses.replace(pretrained.source(name), fetch=_fake_fetcher(random_weights[name], []))
        monkeypatch.setitem(pretrained._SOURCES, name, spec)
    assert _main(args) == 0
    assert _main(args + ["--offline-check"]) == 0
    out = capsys.readouterr().out
    assert "all 2 file(s) present and verified" in out
