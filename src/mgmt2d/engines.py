"""``--backend torch|openvino|onnxruntime|auto``: who runs the segmenter and the classifier backbone.

A backend is a callable ``nn.Module`` taking a float32 batch (N, C, H, W) and returning the
network's output as a torch tensor, so it drops in where the torch module was: as the
segmenter given to ``segmentation.model.predict_probs`` and as ``MGMTClassifier.backbone``
(the BiLSTM and the head stay in torch, on the reused embeddings).

* ``torch``: the module itself; on the CPU the classifier backbone runs channels-last
  (measured faster there, see benchmarks/inference.py; UNet++ gains nothing and stays as is).
* an engine (:data:`ENGINES`, one class each): the module converted at start-up, fp32, batch
  dimension dynamic. The conversion is cached on disk, keyed by the checkpoint's SHA-256, the
  engine and its version, the input shape and the precision; an entry is written into a temp
  folder and renamed into place, and validated on load (key, file hashes, and its outputs on a
  probe batch against torch, see :data:`PROBE`); a stale or corrupt entry is rebuilt, never trusted.
* ``auto``: torch on CUDA; on the CPU the first installed engine of :data:`ENGINES` (a fixed
  order from the measurements in README, not a run-time benchmark), else torch.

Adding an engine: one :class:`EngineBackend` subclass (its modules, files, precisions, converter
and runner) and its entry in :data:`ENGINES`.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("f32", "engine-default")
INSTALL_HINT = 'pip install -r requirements-cpu.txt (or pip install "mgmt2d[cpu-engines]")'
CACHE_FORMAT = 1
ROLES = ("segmenter", "backbone")


@dataclass(frozen=True)
class ProbeTolerance:
    """How closely a converted network must reproduce torch on the probe batch, judged by what changes a result.

    * Segmenter: its outputs are thresholded at 0.5 into masks. Every probe pixel whose torch
      probability lies more than ``mask_margin`` from 0.5 must give the same mask pixel; pixels
      closer to 0.5 may flip (a flip there is within float rounding and changes nothing a
      model can be held to). The probabilities themselves must agree within ``seg_abs``.
    * Backbone: embeddings within ``backbone_rel`` of the batch's largest magnitude.

    Why these numbers: fp32 carries a 24-bit mantissa (eps 6e-8); UNet++ / DenseNet121 sums
    ~1e3-1e4 products per output through ~120 layers (84 GFLOPs at 224 px), and an engine (or
    another CPU's kernels: AVX2, AVX-512, AMX) orders those sums differently. The differences this
    gives were measured at 2e-6 on an AVX2 EPYC and 1.01e-5 on an AVX-512/AMX Xeon for the
    probabilities (the sigmoid's slope, at most 1/4, shrinks the logit's error), and 1e-6
    relative for the embeddings. The tolerances are 10-100x those, and still 1000x below what a
    wrong conversion gives (a wrong layer moves outputs by 1e-1 or more). The mask rule is the one
    that matters for results: kept slices depend on masks only.
    """

    mask_margin: float = 1e-3
    seg_abs: float = 1e-4
    backbone_rel: float = 1e-4


PROBE = ProbeTolerance()


class BackendError(ValueError):
    """A --backend the machine cannot honour (engine not installed, engine on CUDA); one line, exit 2."""


@dataclass(frozen=True)
class BackendOptions:
    """The resolved --backend choice (never "auto") and how engines run."""

    name: str = "torch"
    threads: int = 1
    cache_dir: Path | None = None
    precision: str = "f32"

    def to_dict(self) -> dict:
        return {"backend": self.name, "threads": self.threads, "engine_cache": str(self.cache_dir),
                "engine_precision": self.precision}


def available_cores() -> int:
    """The CPU cores this process may run on (affinity / cgroup cpusets), the --threads default."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


CACHE_FIX = "pass --engine-cache DIR (a folder you can write) or set XDG_CACHE_HOME"


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/mgmt2d/engines (default ~/.cache/mgmt2d/engines): weights folders may be read-only."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:   # no $HOME and no passwd entry (a container's throwaway uid)
            raise BackendError(f"no home folder for the engine cache ($HOME is not set); {CACHE_FIX}") from None
    return Path(base) / "mgmt2d" / "engines"


def _owner(path: Path) -> tuple[str, int | None]:
    """(``PATH belongs to NAME (uid N), mode 0700``, uid) of ``path`` or of its nearest existing parent."""
    import pwd
    import stat

    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    try:
        info = path.stat()
    except OSError:
        return f"{path}: its owner cannot be read", None
    try:
        name = f"{pwd.getpwuid(info.st_uid).pw_name} (uid {info.st_uid})"
    except KeyError:
        name = f"uid {info.st_uid}"
    return f"{path} belongs to {name}, mode {stat.S_IMODE(info.st_mode):04o}", info.st_uid


def _cache_problem(cache_dir: Path, err: OSError) -> str:
    """The one line for an engine cache this user cannot use: where and whose, and the fixes."""
    where = Path(os.fsdecode(err.filename)) if err.filename else cache_dir
    owner, uid = _owner(where)
    share = ""
    if uid is not None and uid != os.geteuid() and os.path.isdir(cache_dir):   # another user's cache
        share = (", or, to share one cache, have its owner make it writable for a common group "
                 f"(chmod -R g+rwXs {cache_dir}) and readable for all (chmod -R a+rX {cache_dir})")
    return (f"the engine cache {cache_dir} cannot be used by this user (uid {os.geteuid()}): "
            f"{err.strerror or err} on {where} ({owner}); {CACHE_FIX}{share}")


def _file_digest(path: Path) -> str:
    """SHA-256 of a converted file (checkpoints: ``mgmt2d.data.io.file_sha256``; a base module cannot import data)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# ------------------------------------------------------------------------------ the engines


class EngineBackend(nn.Module):
    """A converted network run by an inference engine (CPU, inference only) in place of ``source``.

    A subclass is one engine: ``name``, the ``modules`` it needs, the ``files`` its conversion
    writes, the ``precisions`` it runs in, :meth:`convert` and :meth:`run`. ``source`` (the torch
    module it was converted from) stays reachable, e.g. for Grad-CAM. ``cache_status`` says how
    the engine model was obtained: "built", "loaded" or "rebuilt".
    """

    name: ClassVar[str] = ""
    modules: ClassVar[tuple[str, ...]] = ()
    files: ClassVar[tuple[str, ...]] = ()
    precisions: ClassVar[tuple[str, ...]] = ("f32",)

    def __init__(self, source: nn.Module, input_shape: tuple[int, int, int], cache_status: str, folder: Path,
                 threads: int, precision: str) -> None:
        super().__init__()
        self.source = source
        self.input_shape = tuple(input_shape)
        self.cache_status = cache_status

    @property
    def engine(self) -> str:
        return self.name

    @classmethod
    def convert(cls, module: nn.Module, example: torch.Tensor, folder: Path) -> None:   # pragma: no cover
        """Write this engine's ``files`` for ``module`` into ``folder``."""
        raise NotImplementedError

    def run(self, x: np.ndarray) -> np.ndarray:   # pragma: no cover - overridden
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            shape = ", ".join(map(str, self.input_shape))
            raise ValueError(f"the {self.name} model was converted for inputs (N, {shape}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            return torch.from_numpy(self.run(np.zeros((1, *self.input_shape), np.float32))[:0])
        return torch.from_numpy(self.run(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)))


class OnnxRuntimeBackend(EngineBackend):
    """ONNX export (torch's TorchScript exporter, opset 17), run by ONNX Runtime's CPU provider."""

    name = "onnxruntime"
    modules = ("onnxruntime", "onnx")   # ONNX Runtime runs the model, the onnx package writes it
    files = ("model.onnx",)

    def __init__(self, source: nn.Module, input_shape: tuple[int, int, int], cache_status: str, folder: Path,
                 threads: int, precision: str) -> None:
        super().__init__(source, input_shape, cache_status, folder, threads, precision)
        ort = import_engine(self.name)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self._session = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    @classmethod
    def convert(cls, module: nn.Module, example: torch.Tensor, folder: Path) -> None:
        with warnings.catch_warnings():   # the TorchScript exporter's deprecation and tracer notes
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(folder / "model.onnx"), dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: x})[0]


class OpenVinoBackend(EngineBackend):
    """OpenVINO's ``convert_model`` from the torch module, compiled for the CPU.

    OpenVINO's own CPU default precision is bf16/f16-like and flips mask pixels, so f32 sets
    ``INFERENCE_PRECISION_HINT=f32``; ``engine-default`` opts out.
    """

    name = "openvino"
    modules = ("openvino",)
    files = ("model.xml", "model.bin")
    precisions = PRECISIONS

    def __init__(self, source: nn.Module, input_shape: tuple[int, int, int], cache_status: str, folder: Path,
                 threads: int, precision: str) -> None:
        super().__init__(source, input_shape, cache_status, folder, threads, precision)
        ov = import_engine(self.name)
        config = {"INFERENCE_NUM_THREADS": threads}
        if precision == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        core = ov.Core()
        self._compiled = core.compile_model(core.read_model(str(folder / "model.xml")), "CPU", config)
        self._request = self._compiled.create_infer_request()

    @classmethod
    def convert(cls, module: nn.Module, example: torch.Tensor, folder: Path) -> None:
        ov = import_engine(cls.name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ov.convert_model(module, example_input=example, input=[(-1, *example.shape[1:])])
        ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)   # the default would halve weights

    def run(self, x: np.ndarray) -> np.ndarray:
        self._request.infer({0: x})
        return np.array(self._request.get_output_tensor(0).data, copy=True)   # the buffer is reused


# The engines, in --backend auto's order on the CPU: ONNX Runtime first (whole per-patient inference 2.4x
# torch eager vs OpenVINO's 2.1x in benchmarks/inference.py --backends, and a 3x quicker first conversion).
ENGINES: dict[str, type[EngineBackend]] = {e.name: e for e in (OnnxRuntimeBackend, OpenVinoBackend)}
BACKENDS = ("torch", *ENGINES, "auto")


def engine_installed(name: str) -> bool:
    try:
        for module in ENGINES[name].modules:
            importlib.import_module(module)
    except ImportError:
        return False
    return True


def import_engine(name: str):
    """The engine's module; BackendError naming the install command when it (or what it needs) is missing."""
    try:
        for module in ENGINES[name].modules:
            importlib.import_module(module)
    except ImportError as err:
        raise BackendError(f"--backend {name}: {err.name or name} is not installed; install the CPU engines with "
                           f"{INSTALL_HINT}, or use --backend torch") from None
    return importlib.import_module(name)


def engine_version(name: str) -> str:
    return str(import_engine(name).__version__)


# ------------------------------------------------------------------------------ choosing a backend


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend, --threads, --engine-cache, --engine-precision (after --device)."""
    group = parser.add_argument_group("inference backend", "who runs the segmenter and the classifier backbone")
    group.add_argument("--backend", choices=list(BACKENDS), default="torch",
                       help="torch (default); " + " or ".join(ENGINES) + " (CPU engines, optional extras: "
                            f"{INSTALL_HINT}); auto: the fastest installed engine on the CPU, torch on CUDA")
    group.add_argument("--threads", type=int, default=None,
                       help="CPU threads of the models (default: the cores available to this process)")
    group.add_argument("--engine-cache", type=Path, default=None,
                       help="where converted models are cached (default $XDG_CACHE_HOME/mgmt2d/engines, "
                            "i.e. ~/.cache/mgmt2d/engines)")
    group.add_argument("--engine-precision", choices=list(PRECISIONS), default="f32",
                       help="f32 (default, outputs as torch's); engine-default: OpenVINO's own CPU precision "
                            "(bf16/f16 where the CPU has it: faster, but flips mask pixels)")


def resolve_backend(name: str, device: torch.device, threads: int | None = None, cache_dir: Path | None = None,
                    precision: str = "f32") -> BackendOptions:
    """Check a --backend choice against the device and the installed engines; resolve auto."""
    device = torch.device(device)
    if name not in BACKENDS:
        raise BackendError(f"--backend {name!r} not understood; use one of {', '.join(BACKENDS)}")
    if threads is not None and threads < 1:
        raise BackendError(f"--threads {threads}: give at least 1")
    if name == "auto":
        name = "torch"
        if device.type == "cpu":
            name = next((e for e in ENGINES if engine_installed(e)), "torch")
        log.info("--backend auto on %s: %s", device, name)
    if name in ENGINES:
        if device.type != "cpu":
            raise BackendError(f"--backend {name} runs on the CPU, not {device}; use --device cpu, "
                               "or --backend torch on CUDA")
        import_engine(name)
    if precision not in PRECISIONS:
        raise BackendError(f"--engine-precision {precision!r} not understood; use {' or '.join(PRECISIONS)}")
    if precision not in (ENGINES[name].precisions if name in ENGINES else ("f32",)):
        able = [e for e, cls in ENGINES.items() if precision in cls.precisions]
        raise BackendError(f"--engine-precision {precision} applies to --backend {' or '.join(able)} only; "
                           f"{name} runs in f32")
    if cache_dir is None:
        try:
            cache_dir = default_cache_dir()
        except BackendError:
            if name in ENGINES:
                raise
            cache_dir = None   # torch needs no cache
    return BackendOptions(name, int(threads or available_cores()), None if cache_dir is None else Path(cache_dir),
                          precision)


def backend_from_args(args: argparse.Namespace, device: torch.device) -> BackendOptions:
    """:func:`resolve_backend` of the arguments :func:`add_backend_arguments` added; sets torch's threads."""
    opts = resolve_backend(args.backend, device, args.threads, args.engine_cache, args.engine_precision)
    if device.type == "cpu":
        torch.set_num_threads(opts.threads)
    return opts


def channels_last_inputs(module: nn.Module) -> nn.Module:
    """Make ``module`` run channels-last: weights now, every input through a forward pre-hook.

    A hook rather than a wrapper keeps the module (its layer names, e.g. for Grad-CAM) as it
    was. Input conversion matters: timm's NFNet convs standardise their weights at each call,
    so channels-last weights alone change nothing.
    """
    module.to(memory_format=torch.channels_last)
    module.register_forward_pre_hook(_to_channels_last)
    return module


def _to_channels_last(_module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return args


# ------------------------------------------------------------------------------ conversion + cache


def cache_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _entry_problem(folder: Path, fields: dict) -> str | None:
    """Why a cache entry cannot be trusted (None when its manifest and files check out).

    An entry this user may not read raises PermissionError: it is not broken, it is another
    user's (see :func:`_cache_problem`).
    """
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except PermissionError:
        raise
    except (OSError, ValueError) as err:
        return f"unreadable manifest ({type(err).__name__})"
    if not isinstance(manifest, dict) or manifest.get("key") != fields:
        return "made for another checkpoint, engine version, shape or precision"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "manifest lists no file"
    for name, digest in files.items():
        path = folder / name
        if not path.is_file() or _file_digest(path) != digest:
            return f"{name} is missing or altered"
    return None


def probe_problem(role: str, want: np.ndarray, got: np.ndarray, tol: ProbeTolerance = PROBE) -> str | None:
    """Why ``got`` (an engine's outputs) cannot stand in for ``want`` (torch's), judged by :class:`ProbeTolerance`."""
    if got.shape != want.shape:
        return f"output shape {got.shape}, torch gives {want.shape}"
    diff = float(np.abs(got - want).max())
    if role == "segmenter":
        decided = np.abs(want - 0.5) > tol.mask_margin   # pixels whose mask float rounding cannot flip
        flipped = int(((got > 0.5) != (want > 0.5))[decided].sum())
        if flipped:
            return (f"changes {flipped} mask pixel(s) whose probability is more than {tol.mask_margin:g} from the "
                    "0.5 threshold")
        limit = tol.seg_abs
    else:
        limit = tol.backbone_rel * max(float(np.abs(want).max()), 1e-12)
    if not diff <= limit:   # also catches NaN
        return f"differs from torch by {diff:.2e} (limit {limit:.2e})"
    return None


def _probe(module: nn.Module, backend: EngineBackend, role: str, batch: int = 2) -> str | None:
    """Compare the backend with torch on a fixed random batch; the problem, or None."""
    shape = (batch, *backend.input_shape)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    with torch.inference_mode():
        want = module(x).float().numpy()
        got = backend(x).numpy()
    return probe_problem(role, want, got)


def make_backend(
    name: str, module: nn.Module, example_shape: tuple[int, int, int], cache_dir: Path | None = None,
    checkpoint_sha256: str | None = None, threads: int | None = None, precision: str = "f32",
    role: str = "backbone",
) -> nn.Module:
    """``module`` (eval mode, CPU, fp32) run by backend ``name`` on inputs (N, *example_shape).

    torch returns the module itself (the backbone set channels-last: the CPU measurement's
    winner). An engine converts the module, or loads the cached conversion of the same
    checkpoint (``checkpoint_sha256``), engine version, shape and precision, checks it
    against torch on a probe batch and returns an :class:`EngineBackend`. A conversion
    that does not match torch is an error, never used.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    module = module.eval()
    if name == "torch":
        return channels_last_inputs(module) if role == "backbone" else module
    if name not in ENGINES:
        raise BackendError(f"backend {name!r} not understood; use one of {', '.join(BACKENDS[:-1])}")
    if checkpoint_sha256 is None:
        raise ValueError("an engine backend needs the checkpoint's SHA-256 to key its cache")
    engine = ENGINES[name]
    threads = int(threads or available_cores())
    fields = {"format": CACHE_FORMAT, "role": role, "engine": name, "engine_version": engine_version(name),
              "checkpoint_sha256": checkpoint_sha256, "input_shape": [int(s) for s in example_shape],
              "precision": precision}
    cache_dir = Path(cache_dir or default_cache_dir())
    folder = cache_dir / f"{role}-{name}-{cache_key(fields)[:24]}"
    try:
        status = "built"
        if folder.exists():
            problem = _entry_problem(folder, fields)
            if problem is None:
                backend = engine(module, example_shape, "loaded", folder, threads, precision)
                problem = _probe(module, backend, role, batch=1)   # a cheap check at each start-up
                if problem is None:
                    log.info("%s %s: cached conversion %s", role, name, folder)
                    return backend
            log.warning("engine cache %s not trusted (%s): converting again", folder, problem)
            shutil.rmtree(folder, ignore_errors=True)
            if folder.exists():   # another user's entry: not ours to remove
                raise PermissionError(errno.EACCES, f"cannot remove an untrusted entry ({problem})", str(folder))
            status = "rebuilt"
        _build(engine, module, example_shape, fields, folder)
    except PermissionError as err:
        raise BackendError(_cache_problem(cache_dir, err)) from None
    backend = engine(module, example_shape, status, folder, threads, precision)
    problem = _probe(module, backend, role)
    if problem is not None:
        shutil.rmtree(folder, ignore_errors=True)
        raise BackendError(f"the {name} conversion of the {role} {problem}; use --backend torch")
    log.info("%s %s: converted into %s", role, name, folder)
    return backend


def _build(engine: type[EngineBackend], module: nn.Module, shape: tuple, fields: dict, folder: Path) -> None:
    """Convert into a temp folder beside ``folder``, hash the files, rename into place."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp", dir=folder.parent))
    except PermissionError as err:   # name the cache folder, not the temp name mkdtemp tried
        raise PermissionError(err.errno, err.strerror, err.filename if "tmp" not in Path(
            os.fsdecode(err.filename or "")).name else str(folder.parent)) from None
    try:
        log.info("converting the %s for %s (once per checkpoint; cached in %s)", fields["role"], engine.name,
                 folder.parent)
        example = torch.zeros((1, *shape), dtype=torch.float32)
        with torch.no_grad():
            engine.convert(module, example, tmp)
        # The manifest is written inside the temp folder, which is renamed whole: no separate atomic write.
        (tmp / "manifest.json").write_text(json.dumps(
            {"key": fields, "files": {f: _file_digest(tmp / f) for f in engine.files}}, indent=1))
        _readable_by_all(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:   # another process put a valid entry there meanwhile: use theirs
            if _entry_problem(folder, fields) is not None:
                raise
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):   # name the cache, not the temp folder
            raise OSError(err.errno, err.strerror, str(folder)) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _readable_by_all(folder: Path) -> None:
    """An entry other users can load (mkdtemp makes 0700): folders 0755, files 0644, as every output."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
