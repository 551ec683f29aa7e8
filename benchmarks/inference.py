"""Inference per patient, step by step: our schedule (backbone once per slice) vs the reference's
chunk-by-chunk schedule, on synthetic full-size DICOM patients with random-init models (CPU).

    python benchmarks/inference.py [--synth DIR | --patients 3] [--mri-types T1wCE]
        [--seg-slices 8] [--cls-slices 60] [--image-size 224] [--tta-zoom 1.2] [--no-verify]

What runs, per patient (the steps of ``mgmt2d.inference.pipeline.predict``, called one by one so each
is timed on its own; nothing in the library is modified):

  read          ``dicom.read_series`` of each series (sequential; ``predict`` overlaps it with
                the previous patient's model work through ``read_series_many``)
  seg_prep      ``stack.prepare_series`` (non-empty filter, float min-max) + ``segmenter.to_input``
  seg_model     ``segmenter.predict_probs`` (UNet++, one batched pass over the patient's series)
  filter_stack  ``segmenter.from_output`` + ``stack.stack_series`` (tumour filter, stacking)
  frames        ``frames.test_time_view`` (zoom TTA, resize, normalise; a padded last chunk
                also in float, as the published code made it)
  classify      ``classifier.predict_series`` (ours) or ``predict_series_chunkwise`` (the
                reference's schedule), on the same frames, in alternating order

Everything but the classify step is shared by both schedules, so the two "whole" totals
differ only there. Models: a random-init UNet++/DenseNet121 and eca_nfnet_l0 + BiLSTM saved as
checkpoints in a temp weights dir and loaded with ``inference.Predictor.from_weights`` (one "pooled"
classifier, fold 0, so one model per type as with ``--folds 0``), run with our input contract.

Slice counts (CPU time budget; UNet++ at 224 costs seconds per slice here and the
chunk-by-chunk schedule ~35*n_chunks backbone passes per series):

* ``--seg-slices`` M: each series is cut, after reading, to the M central non-empty slices
  before segment-and-stack (0 = no cut). Per-slice costs of the segment steps are then
  projected to each series' full non-empty count ("projected" lines).
* ``--cls-slices`` n: a random segmenter keeps an arbitrary number of slices, so the classify
  step gets a fixed realistic stack instead: the first n non-empty slices of the series
  (min-max scaled, mask channels zero; content does not change the cost), the same for both
  schedules. The kept counts of the random segmenter are reported for information.

The speed-up of the classify step is bounded by the frame ratio 35 * n_chunks(n) / n, which
is printed: it tends to 7 for long series and reaches 5 at n = 105.

``--backends eager torch onnxruntime openvino`` (issue 16) compares the inference backends
instead (``mgmt2d.engines``; "eager" is torch as loaded, no channels-last, the
baseline; "torch" is ``--backend torch``, channels-last backbone on the CPU):

  micro     segmenter slices/s (``--micro-slices`` prepared slices through ``predict_probs``)
            and backbone frames/s (``--micro-frames`` frames through ``embed_frames``) at 224 px,
            per backend, plus UNet++ channels-last (the measurement behind leaving it off)
  whole     per patient, EVERY non-empty slice segmented (``--seg-slices`` is ignored), the
            ``--cls-slices`` stand-in stack classified with ``predict_series``: the steps above
            timed per backend; the published chunk-by-chunk schedule (eager torch,
            ``predict_series_chunkwise``) is timed once per series as the other reference
  start-up  ``load_models`` with a fresh engine cache (conversion) and again (cached)

The backends run one after the other on the same patient; the ratios are against eager
measured in the same run.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from mgmt2d import engines
from mgmt2d.classification import frames, stack
from mgmt2d.classification.chunks import chunk_index, n_chunks
from mgmt2d.classification.model import build_classifier, predict_series, predict_series_chunkwise
from mgmt2d.data import dicom
from mgmt2d.data.contract import OURS
from mgmt2d.data.task2 import POOLED
from mgmt2d.data.weights import WeightsLayout
from mgmt2d.inference import pipeline as inference
from mgmt2d.segmentation import model as segmenter

STEPS = ("read", "seg_prep", "seg_model", "filter_stack", "frames", "classify")
NON_MODEL = ("read", "seg_prep", "filter_stack", "frames")
SEG_STEPS = ("seg_prep", "seg_model", "filter_stack")


def loadavg() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_description() -> str:
    """The CPU model and its vector extensions (AVX2, AVX-512, AMX ...): engines' float rounding and speed depend
    on them (issue 25: the same conversion differed from torch by 2e-6 on an AVX2 EPYC, 1e-5 on an AMX Xeon)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "CPU model unknown"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    vector = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))
    return f"{model or 'CPU'}; flags {' '.join(vector) or 'no AVX'}"


def header(title: str) -> None:
    print(f"== {title}")
    print(
        f"   {datetime.now().isoformat(timespec='seconds')}  {platform.node()}  {platform.machine()}  "
        f"{os.cpu_count()} CPUs  torch {torch.__version__} ({torch.get_num_threads()} threads)  {loadavg()}\n"
        f"   {cpu_description()}",
        flush=True,
    )


def backbone_frames(n: int, seq_len: int = 35, stride: int = 5) -> tuple[int, int]:
    """Backbone passes for a series of n frames: (ours, chunk-by-chunk).

    Ours: every frame once, plus, when the last chunk is padded, the pad frame and that
    chunk's frames again in float (the published code's precision for a padded chunk).
    """
    last = chunk_index(n, seq_len, stride)[-1]
    extra = 1 + int((last >= 0).sum()) if (last < 0).any() else 0
    return n + extra, seq_len * n_chunks(n, seq_len, stride)


def series_frames(images: np.ndarray, image_size: int, zoom: float) -> torch.Tensor:
    """What ``inference.classify_series`` feeds the backbone: test-time view (zoom, resize), normalised."""
    return torch.from_numpy(frames.normalise(frames.test_time_view(images, image_size, zoom)))


def save_weights(root: Path, seed: int) -> WeightsLayout:
    torch.manual_seed(seed)
    layout = WeightsLayout("mgmt2d", root / "segmentation", root / "classification")
    seg_path = layout.segmenter(0)
    seg_path.parent.mkdir(parents=True)
    torch.save({"model": segmenter.build_segmenter().state_dict()}, seg_path)
    path = layout.classifier(POOLED, 0)
    path.parent.mkdir(parents=True)
    config = {"backbone": "eca_nfnet_l0", "lstm_hidden": 128, "seq_len": 35, "stride": 5, "image_size": 224,
              "contract": OURS.to_dict()}
    torch.save({"model": build_classifier().state_dict(), "config": config}, path)
    return layout


def central(idx: np.ndarray, m: int) -> np.ndarray:
    if m <= 0 or len(idx) <= m:
        return idx
    lo = (len(idx) - m) // 2
    return idx[lo:lo + m]


def segment_steps(model, volumes: list[np.ndarray], fractions, device, opts: stack.StackOptions, t: dict[str, float]):
    """stack.segment_and_stack_many, its library steps timed one by one (adds to ``t``)."""
    c = opts.contract
    t0 = time.perf_counter()
    prepared = [stack.prepare_series(v, f, c) for v, f in zip(volumes, fractions)]
    inputs = [segmenter.to_input(s, c.seg_image_size, c.seg_zoom) for _, s, _ in prepared if s is not None]
    batch = np.concatenate(inputs) if inputs else np.zeros((0, 3, c.seg_image_size, c.seg_image_size), np.float32)
    t1 = time.perf_counter()
    binary = segmenter.predict_probs(model, batch, device, opts.seg_batch_size, opts.amp, c.threshold)
    t2 = time.perf_counter()
    results, offset = [], 0
    for volume, prep in zip(volumes, prepared):
        n = 0 if prep[1] is None else len(prep[1])
        masks = (segmenter.from_output(b, volume.shape[1:], c.seg_zoom) for b in binary[offset:offset + n])
        offset += n
        results.append(stack.stack_series(volume, prep, masks, c))
    t3 = time.perf_counter()
    t["seg_prep"] += t1 - t0
    t["seg_model"] += t2 - t1
    t["filter_stack"] += t3 - t2
    return results, len(batch)


def classify_stack(volume: np.ndarray, n: int, c) -> np.ndarray:
    """The stand-in kept stack: first n non-empty slices, min-max scaled, [slice, 0, 0]."""
    idx, scaled, _ = stack.prepare_series(volume, None, c)
    if scaled is None:
        raise SystemExit("error: a series has no non-empty or only constant slices; choose other patients")
    out = np.zeros((*scaled[:n].shape, 3), np.uint8)
    out[..., 0] = scaled[:n].astype(np.uint8)
    return out


def synth_folders(args, tmp: Path, size: str = "full") -> list[Path]:
    """The first ``args.patients`` synthetic Task 2 patient folders (both splits): ``--synth`` or made in ``tmp``."""
    synth = args.synth
    if synth is None:
        synth = tmp / "synth"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mgmt2d", "synth", "--out", str(synth), "--patients",
                        str(args.patients), "--size", size, "--seed", str(args.seed)],
                       check=True, stdout=subprocess.DEVNULL)
        print(f"synthetic data: --patients {args.patients} --size {size} in {time.perf_counter() - t0:.1f} s")
    return sorted((p for split in ("test", "train") for p in (synth / "task2" / split).iterdir() if p.is_dir()),
                  key=lambda p: p.name)[: args.patients]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--synth", type=Path, help="reuse a synthetic dataset (--size full) instead of generating one")
    parser.add_argument(
        "--patients", type=int, default=3, help="patients (synth --patients; Task 2 train+test folders)"
    )
    parser.add_argument("--mri-types", nargs="+", default=["T1wCE"], choices=["FLAIR", "T1w", "T1wCE", "T2w"],
                        help="series per patient (default: T1wCE only, to fit the CPU time budget; every step "
                             "is per series, so the ratios do not depend on it)")
    parser.add_argument(
        "--seg-slices", type=int, default=8, help="central non-empty slices segmented per series (0 = all)"
    )
    parser.add_argument("--cls-slices", type=int, default=60, help="slices classified per series (first non-empty)")
    parser.add_argument(
        "--image-size", type=int, default=224, help="segmenter input size (classifier: 224 from its config)"
    )
    parser.add_argument("--tta-zoom", type=float, default=1.2)
    parser.add_argument("--seg-batch-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32, help="frames per backbone call (both schedules)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip checking the step-by-step segment path against stack.segment_and_stack_many "
                             "(first patient; costs one more segmenter pass)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", nargs="+", choices=["eager", "torch", *engines.ENGINES],
                        help="compare inference backends instead (issue 16): eager is the baseline")
    parser.add_argument("--micro-slices", type=int, default=16, help="--backends: slices for the segmenter rate")
    parser.add_argument("--micro-frames", type=int, default=32, help="--backends: frames for the backbone rate")
    parser.add_argument("--threads", type=int, default=None, help="--backends: threads (default: cores available)")
    parser.add_argument("--report-hook", action="store_true",
                        help="instead: whole inference.predict without a report vs with the report hook (see "
                             "report_hook_cost); small synthetic patients unless --synth")
    parser.add_argument("--rounds", type=int, default=3, help="--report-hook: alternating rounds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.backends:
        compare_backends(args)
        return
    if args.report_hook:
        report_hook_cost(args)
        return
    device = torch.device("cpu")
    start = time.perf_counter()
    header("inference per patient: predict_series vs predict_series_chunkwise")

    with tempfile.TemporaryDirectory(prefix="mgmt2d-bench-inf-") as tmp_name:
        tmp = Path(tmp_name)
        folders = synth_folders(args, tmp)
        t0 = time.perf_counter()
        layout = save_weights(tmp / "weights", args.seed)
        models = inference.Predictor.from_weights(layout, device, list(args.mri_types), [0],
                                       overrides={"seg_image_size": args.image_size, "tta_zoom": args.tta_zoom})
        c = models.contract
        print(f"models: random init saved + loaded with Predictor.from_weights in {time.perf_counter() - t0:.1f} s; "
              f"contract {c.to_dict()}")
        opts = stack.StackOptions(c, seg_batch_size=args.seg_batch_size)
        t0 = time.perf_counter()
        with torch.inference_mode():  # untimed warm-up: first-call allocations / oneDNN set-up
            models.segmenter(torch.zeros(2, 3, args.image_size, args.image_size))
            for m in {id(m): m for ms in models.classifiers.values() for m in ms}.values():
                m.backbone(torch.zeros(4, 3, c.image_size, c.image_size))
        print(f"warm-up (untimed) {time.perf_counter() - t0:.1f} s")
        print(f"per series: segment the {args.seg_slices or 'all'} central non-empty slices, classify the first "
              f"{args.cls_slices} non-empty slices; types {' '.join(args.mri_types)}", flush=True)

        per_patient: list[dict[str, float]] = []   # steps (classify = ours) + classify_chunkwise
        projected: list[dict[str, float]] = []
        frame_counts = [0, 0]
        max_diff = 0.0
        for pi, folder in enumerate(folders):
            t = defaultdict(float)
            volumes, metas, full_nonempty, types = [], [], [], []
            for mri_type in args.mri_types:
                series = folder / mri_type
                if not series.is_dir():
                    continue
                t0 = time.perf_counter()
                volume, meta = dicom.read_series(series, order=c.slice_order, rescale=c.pixel_values == "modality")
                t["read"] += time.perf_counter() - t0
                volumes.append(volume)
                metas.append(meta)
                types.append(mri_type)
            # Benchmark-only cut (untimed): the central non-empty slices of each series.
            idx_full = [stack.select_nonempty(stack.tissue_fraction(v, m.positive_fraction, c.nonempty_test),
                                              c.min_nonzero_fraction) for v, m in zip(volumes, metas)]
            full_nonempty = [len(i) for i in idx_full]
            cut = [np.sort(central(i, args.seg_slices)) for i in idx_full]
            capped = [v[i] for v, i in zip(volumes, cut)]
            fractions = [m.positive_fraction[i] for m, i in zip(metas, cut)]
            results, n_seg = segment_steps(models.segmenter, capped, fractions, device, opts, t)
            kept = [r.slice_index for r in results]
            if pi == 0 and not args.no_verify:
                ref = stack.segment_and_stack_many(models.segmenter, capped, device, opts, fractions)
                for r, mine in zip(ref, results):
                    assert np.array_equal(r.slice_index, mine.slice_index), "step-by-step kept slices differ"
                    assert np.array_equal(r.images, mine.images)
                print("verify: step-by-step segment path == stack.segment_and_stack_many on patient "
                      f"{folder.name} ({[r.kept for r in ref]} kept)")
            descr = []
            for si, (mri_type, volume) in enumerate(zip(types, volumes)):
                stack_u8 = classify_stack(volume, args.cls_slices, c)
                t0 = time.perf_counter()
                x = series_frames(stack_u8, c.image_size, c.tta_zoom)
                index = chunk_index(len(x), c.seq_len, c.stride)
                padded = None
                if (index[-1] < 0).any():   # the published code made a padded chunk in float
                    start_f = int(index[-1, 0])
                    padded = series_frames(stack_u8[start_f:].astype(np.float64), c.image_size, c.tta_zoom)
                t["frames"] += time.perf_counter() - t0
                ours_f, ref_f = backbone_frames(len(x), c.seq_len, c.stride)
                frame_counts[0] += ours_f
                frame_counts[1] += ref_f
                order = ("ours", "chunkwise") if (pi + si) % 2 == 0 else ("chunkwise", "ours")
                probs = {}
                for name in order:
                    fn = predict_series if name == "ours" else predict_series_chunkwise
                    t0 = time.perf_counter()
                    probs[name] = np.mean(np.stack([fn(m, x, c.seq_len, c.stride, args.batch_size,
                                                       padded_chunk_frames=padded)
                                                    for m in models.classifiers[mri_type]]), axis=0)
                    t["classify" if name == "ours" else "classify_chunkwise"] += time.perf_counter() - t0
                max_diff = max(max_diff, float(np.abs(probs["ours"] - probs["chunkwise"]).max()))
                descr.append(f"{mri_type} {volume.shape[0]}x{volume.shape[1]}x{volume.shape[2]} non-empty "
                             f"{full_nonempty[si]}, segmented {len(capped[si])} (kept {len(kept[si])}), "
                             f"classified {len(x)} ({n_chunks(len(x), c.seq_len, c.stride)} chunks)")
            per_patient.append(dict(t))
            scale = sum(full_nonempty) / max(n_seg, 1)
            projected.append({**t, **{s: t[s] * scale for s in SEG_STEPS}})
            print(f"patient {folder.name}: " + " | ".join(f"{s} {t[s]:.1f}" for s in (*STEPS, "classify_chunkwise"))
                  + f" s  {loadavg()}")
            for d in descr:
                print(f"   {d}")
            sys.stdout.flush()

    def report(title: str, rows: list[dict[str, float]]) -> None:
        mean = {s: statistics.mean(r.get(s, 0.0) for r in rows) for s in (*STEPS, "classify_chunkwise")}
        ours_total = sum(mean[s] for s in STEPS)
        ref_total = ours_total - mean["classify"] + mean["classify_chunkwise"]
        non_model = sum(mean[s] for s in NON_MODEL)
        model_ours = mean["seg_model"] + mean["classify"]
        model_ref = mean["seg_model"] + mean["classify_chunkwise"]
        print(f"RESULT {title}\n  seconds per patient ({'+'.join(args.mri_types)}), mean of {len(rows)} patients")
        print(f"  {'step':<14}{'ours':>10}{'chunk-by-chunk':>16}")
        for s in STEPS:
            ref = mean["classify_chunkwise"] if s == "classify" else mean[s]
            print(f"  {s:<14}{mean[s]:>10.2f}{ref:>16.2f}")
        print(f"  {'whole':<14}{ours_total:>10.2f}{ref_total:>16.2f}")
        cls_speed = mean["classify_chunkwise"] / mean["classify"]
        print(f"  classify speed-up  {cls_speed:.2f}x  (goal >= 5: {'met' if cls_speed >= 5 else 'NOT met'}; "
              f"backbone frames: chunk-by-chunk {frame_counts[1]} vs ours {frame_counts[0]} = "
              f"{frame_counts[1] / frame_counts[0]:.2f}x)")
        whole = ref_total / ours_total
        print(f"  whole-inference speed-up  {whole:.2f}x  (goal >= 1.3: {'met' if whole >= 1.3 else 'NOT met'})")
        frac = non_model / model_ours
        print(f"  non-model time (read + seg_prep + filter_stack + frames) {non_model:.2f} s = {100 * frac:.1f} % of "
              f"model time {model_ours:.2f} s (ours; {100 * non_model / model_ref:.1f} % chunk-by-chunk) "
              f"(goal <= 10 %: {'met' if frac <= 0.10 else 'NOT met'})")

    report(f"measured ({args.seg_slices or 'all'} segmented slices per series)", per_patient)
    if args.seg_slices:
        report("projected to every non-empty slice segmented (segment steps scaled by non-empty/segmented; "
               "read and classify as measured)", projected)
    ns = (35, 40, 60, 80, 105, 150, 200)
    print("  frame ratio 35*n_chunks(n)/frames_ours(n), the bound on the classify speed-up: "
          + ", ".join(f"n={n}: {backbone_frames(n)[1] / backbone_frames(n)[0]:.2f}" for n in ns))
    print(f"  max |p_ours - p_chunkwise| over chunks: {max_diff:.2e}")
    print(f"   end  {loadavg()}; total {time.perf_counter() - start:.0f} s", flush=True)


# ---------------------------------------------------------------------------- --backends (issue 16)


def load_backend(name: str, layout: WeightsLayout, args, cache: Path) -> tuple[inference.Predictor, float]:
    """load_models under one backend ("eager": torch as loaded, no backend applied); (models, seconds)."""
    device = torch.device("cpu")
    opts = None if name == "eager" else engines.resolve_backend(name, device, args.threads, cache)
    t0 = time.perf_counter()
    models = inference.Predictor.from_weights(layout, device, list(args.mri_types), [0], backend=opts,
                                   overrides={"seg_image_size": args.image_size, "tta_zoom": args.tta_zoom})
    return models, time.perf_counter() - t0


def rate(fn, count: int) -> float:
    """count / seconds of one call after an untimed warm-up call."""
    fn()
    t0 = time.perf_counter()
    fn()
    return count / (time.perf_counter() - t0)


def compare_backends(args) -> None:
    import copy

    device = torch.device("cpu")
    threads = args.threads or engines.available_cores()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    header(f"inference backends: {' '.join(args.backends)} ({threads} threads)")
    names = list(dict.fromkeys(["eager", *args.backends]))
    with tempfile.TemporaryDirectory(prefix="mgmt2d-bench-backends-") as tmp_name:
        tmp = Path(tmp_name)
        folders = synth_folders(args, tmp)
        layout = save_weights(tmp / "weights", args.seed)
        models, startup = {}, {}
        for name in names:
            models[name], first = load_backend(name, layout, args, tmp / "cache")
            second = None
            if name in engines.ENGINES:
                models[name], second = load_backend(name, layout, args, tmp / "cache")
            startup[name] = (first, second)
            print(f"load_models --backend {name}: {first:.1f} s" + (f", cached {second:.1f} s" if second else ""),
                  flush=True)
        c = models["eager"].contract
        opts = stack.StackOptions(c, seg_batch_size=args.seg_batch_size)

        # micro: the same prepared slices / frames through every backend
        volume, meta = dicom.read_series(folders[0] / args.mri_types[0], order=c.slice_order,
                                         rescale=c.pixel_values == "modality")
        _, scaled, _ = stack.prepare_series(volume, meta.positive_fraction, c)
        mid = max(len(scaled) // 2 - args.micro_slices // 2, 0)
        seg_in = segmenter.to_input(scaled[mid:mid + args.micro_slices], c.seg_image_size, c.seg_zoom)
        frames_in = series_frames(classify_stack(volume, args.micro_frames, c), c.image_size, c.tta_zoom)
        probs, micro = {}, {}
        seg_cl = engines.channels_last_inputs(copy.deepcopy(models["eager"].segmenter))
        for name in names:
            m = models[name]
            clf = m.classifiers[args.mri_types[0]][0]

            def run_seg(seg=m.segmenter, name=name):
                probs[name] = segmenter.predict_probs(seg, seg_in, device, args.seg_batch_size)

            def run_emb(clf=clf, name=name):
                with torch.inference_mode():
                    probs[name + "/emb"] = clf.embed_frames(frames_in, args.batch_size)

            micro[name] = (rate(run_seg, len(seg_in)), rate(run_emb, len(frames_in)))
            print(f"micro {name}: segmenter {micro[name][0]:.2f} slices/s, backbone {micro[name][1]:.2f} frames/s  "
                  f"{loadavg()}", flush=True)
        cl_rate = rate(lambda: segmenter.predict_probs(seg_cl, seg_in, device, args.seg_batch_size), len(seg_in))
        print(f"micro UNet++ channels-last (torch): {cl_rate:.2f} slices/s", flush=True)
        seg_diff = {n: float(np.abs(probs[n] - probs["eager"]).max()) for n in names}
        emb_diff = {n: float(((probs[n + "/emb"] - probs["eager/emb"]).abs().amax(1)
                              / probs["eager/emb"].abs().amax(1)).max()) for n in names}

        # whole: every non-empty slice of every series segmented, the stand-in stack classified
        whole = {n: defaultdict(float) for n in names}
        chunkwise, kept_same, cls_diff, n_segmented = 0.0, True, {n: 0.0 for n in names}, 0
        for pi, folder in enumerate(folders):
            volumes, metas = [], []
            for mri_type in args.mri_types:
                if (folder / mri_type).is_dir():
                    t0 = time.perf_counter()
                    v, mt = dicom.read_series(folder / mri_type, order=c.slice_order,
                                              rescale=c.pixel_values == "modality")
                    read_s = time.perf_counter() - t0
                    volumes.append(v)
                    metas.append(mt)
                    for n in names:
                        whole[n]["read"] += read_s
            fractions = [m.positive_fraction for m in metas]
            ref_kept, ref_probs = None, None
            for n in (names if pi % 2 == 0 else names[::-1]):
                t = whole[n]
                results, n_seg = segment_steps(models[n].segmenter, volumes, fractions, device, opts, t)
                if n == "eager":
                    n_segmented += n_seg
                kept = [r.slice_index.tolist() for r in results]
                series_probs = []
                for volume in volumes:
                    stack_u8 = classify_stack(volume, args.cls_slices, c)
                    t0 = time.perf_counter()
                    x = series_frames(stack_u8, c.image_size, c.tta_zoom)
                    index = chunk_index(len(x), c.seq_len, c.stride)
                    padded = None
                    if (index[-1] < 0).any():
                        padded = series_frames(stack_u8[int(index[-1, 0]):].astype(np.float64),
                                                         c.image_size, c.tta_zoom)
                    t["frames"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    clf = models[n].classifiers[args.mri_types[0]][0]
                    series_probs.append(predict_series(clf, x, c.seq_len, c.stride, args.batch_size,
                                                       padded_chunk_frames=padded))
                    t["classify"] += time.perf_counter() - t0
                    if n == "eager":
                        t0 = time.perf_counter()
                        predict_series_chunkwise(clf, x, c.seq_len, c.stride, args.batch_size,
                                                 padded_chunk_frames=padded)
                        chunkwise += time.perf_counter() - t0
                if ref_kept is None:
                    ref_kept, ref_probs = kept, series_probs
                kept_same &= kept == ref_kept
                cls_diff[n] = max(cls_diff[n], max(float(np.abs(a - b).max()) for a, b in zip(series_probs, ref_probs)))
                print(f"patient {folder.name} {n}: segmented {n_seg} slices (kept {[len(k) for k in kept]}), "
                      + " | ".join(f"{s} {t[s]:.1f}" for s in STEPS) + f" s (cumulative)  {loadavg()}", flush=True)

    npat = len(folders)
    print(f"RESULT inference backends, {threads} threads, {npat} patient(s) x {'+'.join(args.mri_types)}, "
          f"every non-empty slice segmented, {args.cls_slices} slices classified per series")
    print(f"  {'backend':<12}{'seg slices/s':>13}{'x eager':>8}{'(whole run)':>12}{'x eager':>8}{'backbone fr/s':>15}"
          f"{'x eager':>8}{'seg max|dp|':>13}{'emb max rel':>13}{'start s':>9}{'cached s':>9}")
    seg_rate = {n: n_segmented / whole[n]["seg_model"] for n in names}
    for n in names:
        first, second = startup[n]
        print(f"  {n:<12}{micro[n][0]:>13.2f}{micro[n][0] / micro['eager'][0]:>8.2f}{seg_rate[n]:>12.2f}"
              f"{seg_rate[n] / seg_rate['eager']:>8.2f}{micro[n][1]:>15.2f}"
              f"{micro[n][1] / micro['eager'][1]:>8.2f}{seg_diff[n]:>13.1e}{emb_diff[n]:>13.1e}{first:>9.1f}"
              + (f"{second:>9.1f}" if second else f"{'-':>9}"))
    print(f"  UNet++ channels-last (torch): {cl_rate:.2f} slices/s = {cl_rate / micro['eager'][0]:.2f}x eager")
    print(f"  seconds per patient, mean of {npat}:")
    print(f"  {'backend':<12}" + "".join(f"{s:>13}" for s in STEPS) + f"{'whole':>9}{'x eager':>9}{'x published':>12}"
          f"{'classify x chunkwise':>22}")
    eager_whole = sum(whole["eager"][s] for s in STEPS) / npat
    published = eager_whole + (chunkwise - whole["eager"]["classify"]) / npat
    for n in names:
        t = {s: whole[n][s] / npat for s in STEPS}
        total = sum(t.values())
        print(f"  {n:<12}" + "".join(f"{t[s]:>13.2f}" for s in STEPS) + f"{total:>9.2f}{eager_whole / total:>9.2f}"
              f"{published / total:>12.2f}{chunkwise / npat / t['classify']:>22.2f}")
    print(f"  published schedule (eager, chunk-by-chunk classify {chunkwise / npat:.2f} s): whole {published:.2f} s")
    best = max(names, key=lambda n: eager_whole / (sum(whole[n].values()) / npat))
    best_whole = eager_whole / (sum(whole[best][s] for s in STEPS) / npat)
    best_cls = max(chunkwise / whole[n]["classify"] for n in names)
    print(f"  goal whole >= 1.7x eager: best {best} {best_whole:.2f}x ({'met' if best_whole >= 1.7 else 'NOT met'}); "
          f"goal classify >= 7x chunk-by-chunk at {args.cls_slices} slices: best {best_cls:.2f}x "
          f"({'met' if best_cls >= 7 else 'NOT met'})")
    print(f"  same kept slices in every backend: {kept_same}; max |chunk prob - eager|: "
          + ", ".join(f"{n} {cls_diff[n]:.1e}" for n in names))
    print(f"   end  {loadavg()}; total {time.perf_counter() - start:.0f} s", flush=True)


def report_hook_cost(args: argparse.Namespace) -> None:
    """Is inference without ``--report-dir`` as fast as before the report existed?

    Whole ``inference.predict`` runs on the same patients, in alternation, ``--rounds`` times:
    ``none`` (no ``on_patient``: what inference_on_test.py runs without --report-dir) and
    ``hook`` (a no-op ``on_patient``: the per-patient results are kept, masks included, but
    nothing is written). Their ratio bounds the cost of the report plumbing on the inference
    path. Once at the end, ``report`` (the real writer: montages, chunk plots, Grad-CAM, NIfTI)
    shows what a report costs when it is asked for.
    """
    from mgmt2d.inference import report

    device = torch.device("cpu")
    start = time.perf_counter()
    header("inference.predict without a report vs with the report hook")
    with tempfile.TemporaryDirectory(prefix="mgmt2d-bench-hook-") as tmp_name:
        tmp = Path(tmp_name)
        input_dir = tmp / "patients"   # both Task 2 splits (inference needs no label), as links
        input_dir.mkdir()
        for folder in synth_folders(args, tmp, "small"):
            (input_dir / folder.name).symlink_to(folder.resolve())
        patients = sorted(p.name for p in input_dir.iterdir())
        layout = save_weights(tmp / "weights", args.seed)
        models = inference.Predictor.from_weights(layout, device, list(args.mri_types), [0],
                                       overrides={"seg_image_size": args.image_size, "tta_zoom": args.tta_zoom})
        print(f"{len(patients)} patients ({input_dir}), types {' '.join(args.mri_types)}, "
              f"contract {models.contract.to_dict()}", flush=True)

        def run(hook) -> tuple[float, list[float]]:
            t0 = time.perf_counter()
            sub, _ = models.predict(patients, input_dir, inference.PredictOptions(
                list(args.mri_types), args.seg_batch_size, args.batch_size, workers=1), hook)
            return time.perf_counter() - t0, sub.MGMT_value.tolist()

        run(None)   # untimed warm-up
        seconds: dict[str, list[float]] = {"none": [], "hook": []}
        values = {}
        for r in range(args.rounds):
            for name in (("none", "hook") if r % 2 == 0 else ("hook", "none")):
                took, values[name] = run(None if name == "none" else (lambda result: None))
                seconds[name].append(took)
                print(f"round {r + 1} {name}: {took:.2f} s  {loadavg()}", flush=True)
        assert values["none"] == values["hook"], "the hook changed the probabilities"
        args_ns = argparse.Namespace(overwrite=False, top_frames=3)
        writer = report.writer(tmp / "report", models, args_ns, patients)
        took_report, values["report"] = run(writer)
        assert values["report"] == values["none"], "the report changed the probabilities"
        none, hook = statistics.median(seconds["none"]), statistics.median(seconds["hook"])
        print(f"RESULT median seconds for {len(patients)} patients: without report {none:.2f}, with the no-op "
              f"report hook {hook:.2f}: ratio hook/none {hook / none:.3f} (goal <= 1.05)")
        print(f"  with the report written (Grad-CAM, images, NIfTI): {took_report:.2f} s, "
              f"{took_report / none:.2f}x; only when --report-dir / report is asked for")
    print(f"   end  {loadavg()}; total {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
