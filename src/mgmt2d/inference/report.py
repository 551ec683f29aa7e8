"""``python -m mgmt2d report``: one patient through inference, written as a page you can look at.

    python -m mgmt2d report --settings S --patient 00123 [--input DIR] [--out DIR] [--weights-dir W]

Runs :func:`mgmt2d.inference.pipeline.predict` (the code of inference_on_test.py, with its
model and input-contract flags) on one patient and writes ``OUT/<patient>/``:

- ``index.html``: the patient probability, per-type probabilities, the fold models used and
  the input contract of the checkpoints; per MRI type a montage of every slice in reading
  order (kept slices with their WT / ET contours, dropped ones marked with the reason), the
  chunk probabilities against the chunk's first slice, and Grad-CAM heatmaps of the frames
  with the most heatmap mass in the highest and the lowest chunk (fold model 1);
- ``<type>_slices.png``, ``<type>_chunks.png``, ``<type>_gradcam.png``;
- ``<type>_image.nii.gz`` and ``<type>_seg.nii.gz`` (2 = WT outside ET, 4 = ET) in patient
  space (see :mod:`mgmt2d.data.nifti`; for NIfTI input on the input's own grid), for ITK-SNAP
  or 3D Slicer, and ``<type>_brain.nii.gz`` (the brain mask) when skull-stripped;
- ``<type>_seg.dcm`` for DICOM input: the WT and ET masks as a DICOM Segmentation object over
  the source series (:mod:`mgmt2d.inference.dicom_seg`), for a PACS viewer, 3D Slicer or OHIF;
- ``<patient>.json``: the probability, per-type results, the contract and the weights' SHA-256,
  for a worklist or a structured report downstream;
- ``report.json`` (the numbers) and ``report_config.json`` (the resolved configuration).

``inference_on_test.py --report-dir DIR`` writes the same folder for every patient from the
results of its own run. A patient folder is written whole in a temporary folder and renamed
into place; an existing one is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mgmt2d import overlay
from mgmt2d.classification.chunks import chunk_index
from mgmt2d.data import nifti, shards, task2
from mgmt2d.data import series as series_io
from mgmt2d.data.io import check_writable, write_run_config
from mgmt2d.data.nifti_series import output_grid
from mgmt2d.data.settings import SettingsError, load_settings
from mgmt2d.device import resolve_device
from mgmt2d.inference import dicom_seg, pipeline
from mgmt2d.inference.gradcam import ChunkCam, chunk_cam

log = logging.getLogger(__name__)

INDEX = "index.html"
TILE = 112           # montage tile width (px)
MONTAGE_COLUMNS = 12
CAM_TILE = 160       # Grad-CAM tile width (px)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pipeline.add_predictor_arguments(parser)
    parser.add_argument("--patient", required=True, help="BraTS21ID of the patient (folder under --input)")
    parser.add_argument("--out", type=Path, help="report folder (default: 'report' beside TEST_PREDICTION_FILE)")
    parser.add_argument("--top-frames", type=int, default=3, help="Grad-CAM frames shown per explained chunk")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report of this patient")


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.settings)
    input_dir = pipeline.input_folder(args, settings)
    if args.top_frames < 1:
        raise SettingsError(f"--top-frames {args.top_frames}: show at least 1 frame per explained chunk")
    patient = task2.format_id(args.patient, "--patient")
    if not series_io.patient_series(input_dir, patient, list(task2.MRI_TYPES), args.input_format):
        expected = "<case>_<type>.nii.gz files" if args.input_format == "nifti" else "<type>/ folders"
        raise SettingsError(f"no series of patient {patient} in {input_dir} (expected {input_dir / patient}/ with "
                            f"{expected}; --input-format says which)")
    out = args.out or settings["TEST_PREDICTION_FILE"].parent / "report"
    check_reports(out, [patient], args.overwrite)   # before the models load
    check_writable(out, "report")
    with report_lock(out):   # as inference --report-dir: one run writes a report folder at a time
        device = resolve_device(args.device)
        models, _ = pipeline.Predictor.from_args(args, settings, device)
        write = writer(out, models, args, [patient])
        sub, _ = models.predict([patient], input_dir, pipeline.options_from_args(args), on_patient=write)
    print(f"patient {patient}: MGMT_value {sub.MGMT_value.iloc[0]:.4f} -> {out / patient / INDEX}")
    return 0


def writer(out: Path, models: pipeline.Predictor, args: argparse.Namespace,
           patients: list[str], overwrite: bool | None = None) -> Callable[[pipeline.PatientResult], None]:
    """The ``on_patient`` hook writing each patient's report under ``out``; checks up front that
    no existing report would be replaced without ``--overwrite`` (``overwrite``, default
    ``args.overwrite``: inference's ``--resume`` replaces the reports of the patients it redoes)
    and removes the temp folders a killed writer left for these patients."""
    out = Path(out)
    check_reports(out, patients, bool(getattr(args, "overwrite", False) if overwrite is None else overwrite))
    check_writable(out, "report")
    clean_stale_temps(out, patients)
    top = int(getattr(args, "top_frames", 3))
    config = {**vars(args), "report_dir": out, "contract": models.contract.record(), "weights": models.files}
    weights = dicom_seg.weights_sha256(sorted({f for files in models.files.values() for f in files}))   # once

    def write(result: pipeline.PatientResult) -> None:
        write_report(out, result, models, config, top, weights)

    return write


def is_complete(out: Path, patient: str) -> bool:
    """A patient's report is complete once its folder is in place (written whole, then renamed)."""
    return (Path(out) / patient / INDEX).is_file()


def clean_stale_temps(out: Path, patients: list[str]) -> None:
    """Remove the temp folders (see :func:`write_report`) a killed run left for ``patients``."""
    for patient in patients:
        for stale in Path(out).glob(f".{patient}.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def report_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` while a run writes reports there: a second run on the same folder is refused
    (naming the first), so it neither mixes its reports in nor removes the first's temp folders."""
    with shards.exclusive(Path(out) / ".lock", str(out), "wait for it or choose another report folder"):
        yield


def check_reports(out: Path, patients: list[str], overwrite: bool) -> None:
    """Refuse to replace existing patient reports without ``--overwrite``."""
    existing = [p for p in patients if (Path(out) / p).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{Path(out) / existing[0]} already exists ({len(existing)} patient report(s) in "
                              f"{out}); pass --overwrite to replace them or choose another folder")


def write_report(out: Path, result: pipeline.PatientResult, models: pipeline.Predictor,
                 config: dict[str, Any], top_frames: int = 3, weights: Mapping[str, str] | None = None) -> Path:
    """Write ``out/<patient>/`` (see the module doc) atomically; returns its index.html.

    ``weights``: {checkpoint: SHA-256} for ``<patient>.json`` (hashed once per run by :func:`writer`).
    """
    final = Path(out) / result.patient
    Path(out).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{result.patient}.tmp", dir=out))
    try:
        sections = [_series_section(tmp, s, models, top_frames) for s in result.series]
        summary = _summary(result, models, sections)
        (tmp / "report.json").write_text(json.dumps(summary, indent=2, default=str))
        record = dicom_seg.patient_record(
            result.patient, result.prob, fallback=result.fallback,
            types={s["type"]: {"prob": s["prob"], "kept": s.get("kept"), "total": s.get("total"),
                               "chunks": len(s.get("chunks", [])), "note": s["note"], "seg": s.get("seg")}
                   for s in sections},
            contract=models.contract.record(),
            weights=weights if weights is not None else dicom_seg.weights_sha256(
                sorted({f for files in models.files.values() for f in files})))
        dicom_seg.write_patient_json(tmp / f"{result.patient}.json", record)
        write_run_config(tmp, "report_config.json", config)
        (tmp / INDEX).write_text(_page(result, models, sections))
        tmp.chmod(0o755)
        if final.exists():
            shutil.rmtree(final)   # allowed: writer() refused existing reports without --overwrite
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final / INDEX


# --------------------------------------------------------------------------- per series


def _series_section(folder: Path, s: pipeline.SeriesResult, models: pipeline.Predictor,
                    top_frames: int) -> dict[str, Any]:
    """Write the series' images and NIfTI files; returns what the page and report.json say about it."""
    t = s.mri_type
    section: dict[str, Any] = {"type": t, "prob": None if np.isnan(s.prob) else s.prob, "note": s.note,
                               "images": [], "files": [], "notes": []}
    if s.volume is None or s.stacked is None:
        return section
    st = s.stacked
    section.update(kept=st.kept, total=st.total, nonempty=st.nonempty,
                   dropped={str(k): v for k, v in sorted((st.dropped or {}).items())})
    if s.meta is not None and s.meta.pixel_spacings:   # several (the notes say so): the NIfTI uses the first
        section["pixel_spacings"] = [{"spacing": list(sp), "slices": n} for sp, n in s.meta.pixel_spacings]
    _write_png(folder / f"{t}_slices.png", _montage(s.volume, st))
    section["images"].append((f"{t}_slices.png", f"{t}: every slice in reading order ({st.kept} of {st.total} "
                              "kept; WT yellow, ET red; dropped slices darkened with the reason)"))
    if s.chunk_probs is not None:
        starts = _chunk_starts(st, models.contract)
        section["chunks"] = [{"start_slice": int(a), "prob": float(p)} for a, p in zip(starts, s.chunk_probs)]
        _chunk_plot(folder / f"{t}_chunks.png", starts, s.chunk_probs, s.prob, t)
        section["images"].append((f"{t}_chunks.png", f"{t}: chunk probability against the chunk's first slice"))
        cams = _explain(models.classifiers[t][0], s, models, top_frames)
        _write_png(folder / f"{t}_gradcam.png", _cam_figure(cams, top_frames))
        section["gradcam"] = [{"chunk": c.chunk, "prob": c.prob, "frames": [int(c.slices[f]) for f in
                                                                            c.top_frames(top_frames)]} for c in cams]
        section["images"].append((f"{t}_gradcam.png", f"{t}: Grad-CAM (fold model 1) of the highest and lowest "
                                  f"chunk, the {top_frames} frames with the most heatmap mass; left the frame as "
                                  "the model saw it, right the heatmap (one scale per chunk)"))
    masks = st.masks if st.masks is not None else np.zeros((st.total, 2, *s.volume.shape[1:]), np.uint8)
    outputs = {f"{t}_image.nii.gz": s.volume.astype(np.float32),
               f"{t}_seg.nii.gz": nifti.task2_labels(masks[:, 0], masks[:, 1])}
    if s.brain_mask is not None:
        outputs[f"{t}_brain.nii.gz"] = s.brain_mask.astype(np.uint8)
    try:   # DICOM: placed by the series geometry; NIfTI input: on the input file's own grid and affine
        for name, data in outputs.items():
            nifti.save_nifti(folder / name, *output_grid(data, s.meta), voxel_order=True)
            section["files"].append(name)
    except ValueError as err:
        section["notes"].append(f"NIfTI not written: {err}")
    if s.meta is not None and s.meta.files and not series_io.is_nifti(s.meta.files[0]):
        try:   # the masks as a DICOM SEG over the source series (opens in 3D Slicer, OHIF, a PACS viewer)
            dicom_seg.write_seg(s.meta.files, masks[:, 0], masks[:, 1], folder / f"{t}_seg.dcm",
                                dicom_seg.SegOptions(label=t))
            section["seg"] = f"{t}_seg.dcm"
            section["files"].append(f"{t}_seg.dcm")
        except dicom_seg.DicomSegError as err:
            section["notes"].append(f"DICOM SEG not written: {err}")
    for warning in s.meta.warnings if s.meta is not None else []:
        section["notes"].append(f"reading: {warning}")
    return section


def _montage(volume: np.ndarray, st) -> np.ndarray:
    """Every slice in reading order: kept ones with contours, dropped ones marked with the reason."""
    lo, hi = np.percentile(volume, [0.0, 99.5]) if volume.size else (0.0, 1.0)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    kept = set(st.slice_index.tolist())
    tiles = []
    for k in range(len(volume)):
        gray = np.clip((volume[k] - lo) * scale, 0, 255).astype(np.uint8)
        gray = overlay.resize_tile(gray[..., None].repeat(3, axis=2), TILE)[..., 0]
        masks = st.masks[k] if st.masks is not None else (None, None)
        tile = overlay.contour_overlay(gray, masks[0], masks[1])
        if k in kept:
            tiles.append(overlay.caption(tile, f"{k}\nkept"))
        else:
            tiles.append(overlay.mark_dropped(tile, f"{k}\n{(st.dropped or {}).get(k, 'dropped')}"))
    return overlay.grid(tiles, MONTAGE_COLUMNS)


def _chunk_starts(st, contract) -> np.ndarray:
    """Series slice of each chunk's first frame."""
    index = chunk_index(st.kept, contract.seq_len, contract.stride)
    return st.slice_index[index[:, 0]]


def _chunk_plot(path: Path, starts: np.ndarray, probs: np.ndarray, mean: float, mri_type: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.plot(starts, probs, "o-", label="chunk")
    ax.axhline(mean, color="tab:red", linestyle="--", label=f"{mri_type} mean {mean:.3f}")
    ax.set_xlabel("chunk start (series slice)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _explain(model, s: pipeline.SeriesResult, models: pipeline.Predictor, top_frames: int) -> list[ChunkCam]:
    """Grad-CAM of the highest and the lowest chunk (once when they are the same chunk)."""
    order = np.argsort(s.chunk_probs, kind="stable")
    chunks = [int(order[-1])] + ([int(order[0])] if len(order) > 1 else [])
    return [chunk_cam(model, s.stacked, models.contract, c) for c in chunks]


def _cam_figure(cams: list[ChunkCam], top_frames: int) -> np.ndarray:
    rows = []
    for which, cam in zip(("highest", "lowest"), cams):
        vmax = float(cam.cam.max())
        for t in cam.top_frames(top_frames):
            frame = overlay.resize_tile(overlay.stacked_overlay(cam.images[t]), CAM_TILE)
            heat = overlay.resize_tile(overlay.heatmap_overlay(np.repeat(cam.images[t][..., :1], 3, axis=2),
                                                               cam.cam[t], vmax), CAM_TILE)
            text = f"{which} chunk {cam.chunk}, p={cam.prob:.3f}\nseries slice {cam.slices[t]}"
            share = 100 * cam.mass[t] / max(float(cam.mass.sum()), 1e-12)
            rows += [overlay.caption(frame, text), overlay.caption(heat, f"Grad-CAM\n{share:.0f}% of the chunk's heat")]
    return overlay.grid(rows, 2)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError(f"could not encode {path.name}")
    path.write_bytes(data.tobytes())


# --------------------------------------------------------------------------- page


def _summary(result: pipeline.PatientResult, models: pipeline.Predictor, sections: list[dict]) -> dict[str, Any]:
    return {
        "patient": result.patient, "MGMT_value": result.prob, "fallback": result.fallback,
        "types": {s["type"]: {k: v for k, v in s.items() if k not in ("images",)} for s in sections},
        "models": models.files, "contract": models.contract.record(), "note": result.note,
    }


def _page(result: pipeline.PatientResult, models: pipeline.Predictor, sections: list[dict]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>MGMT report {e(result.patient)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}img{max-width:100%}</style></head><body>",
        f"<h1>Patient {e(result.patient)}</h1>",
        f'<p class="probability">MGMT promoter methylation probability: <b>{result.prob:.4f}</b></p>',
    ]
    if result.note:
        parts.append(f"<p><b>{e(result.note)}</b></p>")
    if result.fallback:
        parts.append(f"<p><b>No usable slice in any MRI type: the probability is the fallback "
                     f"{pipeline.FALLBACK}.</b> Why, per type, below.</p>")
    parts.append("<h2>Per MRI type</h2><table><tr><th>type</th><th>probability</th><th>kept / total slices</th>"
                 "<th>chunks</th><th>note</th></tr>")
    for s in sections:
        prob = "" if s["prob"] is None else f"{s['prob']:.4f}"
        kept = f"{s['kept']} / {s['total']}" if "kept" in s else ""
        parts.append(f"<tr><td>{e(s['type'])}</td><td>{prob}</td><td>{kept}</td>"
                     f"<td>{len(s.get('chunks', []))}</td><td>{e(s['note'])}</td></tr>")
    parts.append("</table><h2>Models</h2><ul>")
    for what, files in models.files.items():
        parts.append(f"<li>{e(what)}: {e(', '.join(files))}</li>")
    parts.append("</ul><h2>Input contract of the checkpoints</h2><table>")
    for key, value in models.contract.record().items():
        parts.append(f"<tr><th>{e(str(key))}</th><td>{e(str(value))}</td></tr>")
    parts.append("</table>")
    for s in sections:
        parts.append(f"<h2>{e(s['type'])}</h2>")
        if s["note"]:
            parts.append(f"<p>Not scored: {e(s['note'])}</p>")
        for note in s["notes"]:
            parts.append(f"<p>{e(note)}</p>")
        for src, alt in s["images"]:
            parts.append(f'<figure><img src="{e(src)}" alt="{e(alt)}"><figcaption>{e(alt)}</figcaption></figure>')
        if s["files"]:
            links = ", ".join(f'<a href="{e(f)}">{e(f)}</a>' for f in s["files"])
            parts.append(f"<p>NIfTI (open the image, then the segmentation as its label map): {links}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
