"""Runtime verbs: `galaxy-edge run`, `detect`, `classify`.

Only argparse here, and nothing from the training side; the handlers import the runtime
(numpy, OpenCV and a TFLite interpreter) when they run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_DETECTOR = MODELS_DIR / "galaxy_detector_int8.tflite"
DEFAULT_CLASSIFIER = MODELS_DIR / "galaxy10_classifier_int8.tflite"


def _probability(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value}")
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of pixels, 0 or more, got {value}")
    return number


def _runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, default=None, help="interpreter threads (default: the runtime's)"
    )
    parser.add_argument(
        "--runtime",
        choices=("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite"),
        help="force a TFLite runtime",
    )
    parser.add_argument(
        "--kernels",
        choices=("default", "builtin"),
        default="default",
        help="builtin: TFLite's own kernels, without XNNPACK: the same int8 results as tflite-runtime "
        "2.14 on a Raspberry Pi, bit for bit, but several times slower on x86 (see `bench --kernels`)",
    )


def _verifier_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-verifier",
        dest="verify",
        action="store_false",
        help="skip the verifier that the detector's card names (its second look at small candidates); "
        "the detector's own scores and threshold then apply",
    )
    parser.add_argument(
        "--box-refiner",
        type=Path,
        metavar="FILE",
        help="refine the detector's boxes under 64 pixels with this box refiner .tflite (the optional "
        "models/galaxy_box_refiner_int8.tflite, or one from train --box-refiner), in place of any its "
        "card names",
    )
    parser.add_argument(
        "--frame-model",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a whole-frame twin of the detector (export M.keras --frame-size WxH, say 1280x720 for a 720p "
        "camera): frames of its size run through it in one invoke instead of tiles, in place of any its "
        "card names for that size (repeatable)",
    )


def _open_detector(path: Path, args: argparse.Namespace):
    """The detector with what _verifier_option's flags ask for: its verifier or not, a box refiner or
    whole-frame twins for this run."""
    from edge.models import Detector

    return Detector(
        path,
        args.threads,
        args.runtime,
        args.kernels,
        args.verify,
        box_refiner=args.box_refiner,
        frame_models=args.frame_model,
    )


def register(verbs: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    run = verbs.add_parser(
        "run",
        help="the whole chain on a camera, video, images or FITS: detect, classify, track, write results",
        description="Detect galaxies in each frame, classify each crop, track them across frames, and write "
        "annotated frames, detections.jsonl and catalog.csv.",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge run --source samples --out out/demo\n"
        "  galaxy-edge run --source 0 --out out/night1 --show",
    )
    run.add_argument(
        "--source",
        required=True,
        help="camera index, video, image, folder, glob, FITS, rtsp/http URL or 'picamera2'",
    )
    run.add_argument("--out", type=Path, required=True, help="output folder")
    run.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR, help="detector .tflite")
    run.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER, help="classifier .tflite")
    run.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    run.add_argument(
        "--tiling",
        choices=("auto", "on", "off"),
        default="auto",
        help="detect on overlapping tiles at native scale (auto: when the frame is much larger "
        "than the detector input)",
    )
    run.add_argument(
        "--tiles-per-frame",
        type=int,
        help="live views of big frames: run this many tiles per frame and reuse the others' latest "
        "results (the whole field refreshes every few frames at a steady cost; a whole-frame twin in the "
        "detector's card is then left out); default: all tiles, or the twin for frames of its size",
    )
    run.add_argument(
        "--score-threshold", type=_probability, help="detector threshold (default: the model card's)"
    )
    run.add_argument(
        "--reject-threshold",
        type=_probability,
        default=0.4,
        help="a galaxy whose top class probability is below this is reported 'uncertain'",
    )
    run.add_argument(
        "--min-classify-px",
        type=_non_negative,
        metavar="PX",
        help="galaxies whose box's longer side is under PX are reported 'unresolved' and not classified "
        "(default: the classifier card's resolution_floor_px, where its labels stop being better than a "
        "constant answer; 0 classifies every galaxy)",
    )
    _verifier_option(run)
    run.add_argument("--rotations", action="store_true", help="average the classifier over 8 rotations/flips")
    run.add_argument("--video", action="store_true", help="write annotated frames as annotated.mp4")
    run.add_argument("--no-annotate", action="store_true", help="do not write annotated frames")
    run.add_argument("--save-crops", action="store_true", help="save each classified crop under crops/")
    run.add_argument("--show", action="store_true", help="show a live window (needs OpenCV with a GUI)")
    _runtime_options(run)
    run.set_defaults(handler=run_chain)
    _register_bench(verbs, formatter)

    detect = verbs.add_parser(
        "detect",
        help="detect galaxies in images; --json gives one JSON object per image",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge detect samples/sdss_field_1045_301_2_129.jpg --json",
    )
    detect.add_argument("images", nargs="+", help="image files, folders or globs")
    detect.add_argument("--model", type=Path, default=DEFAULT_DETECTOR, help="detector .tflite")
    detect.add_argument("--json", action="store_true", help="one JSON object per line")
    detect.add_argument("--tiling", choices=("auto", "on", "off"), default="auto")
    detect.add_argument("--score-threshold", type=_probability, help="default: the model card's")
    _verifier_option(detect)
    _runtime_options(detect)
    detect.set_defaults(handler=run_detect)

    classify = verbs.add_parser(
        "classify",
        help="classify galaxy cutouts (each image is one galaxy); --json gives one JSON object per image",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge classify samples/gz2_101756.jpg --json",
    )
    classify.add_argument("images", nargs="+", help="image files, folders or globs")
    classify.add_argument("--model", type=Path, default=DEFAULT_CLASSIFIER, help="classifier .tflite")
    classify.add_argument("--json", action="store_true", help="one JSON object per line")
    classify.add_argument("--rotations", action="store_true", help="average over 8 rotations/flips")
    _runtime_options(classify)
    classify.set_defaults(handler=run_classify)


def _register_bench(verbs: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    bench = verbs.add_parser(
        "bench",
        help="latency of the models and the whole chain, against yardsticks measured in the same run",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge bench --json bench/bench.json\n"
        "  galaxy-edge bench --threads 4 --check bench/reference_x86_2core.csv\n"
        "  galaxy-edge bench --threads 1 2 4 --write-reference bench/reference_pi4.csv  # on a Pi",
    )
    bench.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR)
    bench.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER)
    bench.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2, 4], help="interpreter thread counts for the models"
    )
    bench.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model and per chain")
    bench.add_argument(
        "--resolutions",
        nargs="*",
        default=["640x480", "1280x720", "1920x1080"],
        choices=("640x480", "1280x720", "1920x1080"),
        help="chain frame sizes (none: models only)",
    )
    bench.add_argument(
        "--sim-frames",
        type=Path,
        help="also run the chain on simulated frames from this folder (`galaxy-edge simulate frames "
        "--size 1920x1080 --n 4 --out DIR`); the real samples are always used",
    )
    bench.add_argument(
        "--tiles-per-frame", type=int, default=4, help="the live chain's rolling tiles (also run: all tiles)"
    )
    bench.add_argument(
        "--kernels",
        choices=("default", "builtin"),
        default="default",
        help="builtin: TFLite's own kernels (what tflite-runtime 2.14 runs int8 with) instead of XNNPACK",
    )
    bench.add_argument("--no-float", action="store_true", help="skip the float32 models beside the int8 ones")
    bench.add_argument(
        "--arm-icount",
        action="store_true",
        help="also count arm64 instructions per invoke and per 1280x720 frame in the emulated Pi userland "
        "(../shared/tools/pi-userland; deterministic, minutes)",
    )
    bench.add_argument(
        "--arm-icount-only",
        action="store_true",
        help="only the arm64 instruction counts (no timing): `--arm-icount-only --write-reference "
        "bench/reference_arm_icount.csv` refreshes the reference that `make test` checks",
    )
    bench.add_argument("--json", type=Path, help="write the results as JSON (a .md table beside it)")
    bench.add_argument("--histogram", type=Path, help="latency histogram PNG (needs matplotlib)")
    bench.add_argument(
        "--check", type=Path, help="reference CSV: exit 1 on a regression beyond its tolerances"
    )
    bench.add_argument("--write-reference", type=Path, help="write a reference CSV from this run")
    bench.set_defaults(handler=run_bench)

    serve = verbs.add_parser(
        "serve",
        help="the field demo page: the sky with boxes, and 'you vs the machine' at classifying galaxies",
        description="A small web app (Flask) for star parties and classrooms: a slideshow or live camera "
        "with the detector's boxes, and a game in which visitors classify galaxies, then see the "
        "classifier's answer, its probabilities and where it looked. Binds 127.0.0.1 unless --host says "
        "otherwise; writes only rounds.csv in --data.",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge serve                        # http://127.0.0.1:8080\n"
        "  galaxy-edge serve --host 0.0.0.0 --source 0   # on the LAN, with the camera",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--source", default=str(MODELS_DIR.parent / "samples"), help="sky panel: camera, video or images"
    )
    serve.add_argument("--no-sky", action="store_true", help="the game only: no detector, no sky panel")
    serve.add_argument(
        "--interval", type=float, default=6.0, help="seconds per still image in the sky slideshow"
    )
    serve.add_argument(
        "--deck",
        type=Path,
        default=MODELS_DIR.parent / "samples" / "deck",
        help="game images: one folder per class; its example.jpg (or first image) is the button picture",
    )
    serve.add_argument("--data", type=Path, default=Path("out/serve"), help="where rounds.csv is written")
    serve.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR, help="detector .tflite")
    serve.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER, help="classifier .tflite")
    serve.add_argument(
        "--tiles-per-frame", type=int, default=4, help="rolling tiles per frame for big camera frames"
    )
    _runtime_options(serve)
    serve.set_defaults(handler=run_serve)


def run_bench(args: argparse.Namespace) -> int:
    from edge.bench import (
        check_reference,
        markdown,
        run_benchmark,
        save_histogram,
        write_outputs,
        write_reference,
    )
    from galaxy_edge.errors import GalaxyEdgeError

    for path in (args.detector, args.classifier):
        if not path.is_file():
            raise GalaxyEdgeError(f"model file not found: {path}")
    extra = {}
    if not args.no_float:
        for role, path in (("detector", args.detector), ("classifier", args.classifier)):
            floating = path.with_name(path.name.replace("_int8", "_float32"))
            if floating != path and floating.is_file():
                extra[f"{role}_float32"] = floating

    def progress(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr)

    if args.arm_icount_only:
        from edge.bench import environment

        result = {"environment": environment(), "models": {}, "chain": {}, "notes": []}
    else:
        result = run_benchmark(
            args.detector,
            args.classifier,
            args.threads,
            args.seconds,
            args.resolutions,
            extra_models=extra,
            sim_frames=args.sim_frames,
            progress=progress,
            tiles_per_frame=args.tiles_per_frame,
            kernels=args.kernels,
        )
    if args.arm_icount or args.arm_icount_only:
        from edge.bench import ICOUNT_FRAME, arm_instruction_counts

        result["arm_icount"] = arm_instruction_counts(args.detector, args.classifier, ICOUNT_FRAME, progress)
    print(markdown(result))
    if args.json:
        write_outputs(result, args.json, args.json.with_suffix(".md"))
        print(f"results in {args.json} and {args.json.with_suffix('.md')}")
    if args.histogram:
        saved = save_histogram(result, args.histogram)
        print(f"histogram in {saved}" if saved else "histogram skipped: matplotlib is not installed")
    if args.write_reference:
        print(f"reference written to {write_reference(result, args.write_reference)}")
    if args.check:
        if not args.check.is_file():
            raise GalaxyEdgeError(f"{args.check}: reference file not found")
        problems = check_reference(result, args.check)
        for problem in problems:
            print(f"regression: {problem}")
        print(f"check against {args.check}: {'FAILED' if problems else 'passed'}")
        return 1 if problems else 0
    return 0


def run_serve(args: argparse.Namespace) -> int:
    try:
        import flask  # noqa: F401
    except ImportError:
        from galaxy_edge.errors import MissingDependencyError

        raise MissingDependencyError("flask", "serve", "galaxy-edge serve") from None
    from edge.chain import Chain, ChainSettings
    from edge.models import Classifier, Detector
    from edge.serve.app import create_app, serve
    from edge.serve.sky import SkyFeed

    classifier = Classifier(args.classifier, args.threads, args.runtime, args.kernels)
    sky = None
    if not args.no_sky:
        # The sky's chain has its own classifier: an interpreter is not shared across threads.
        chain = Chain(
            Detector(args.detector, args.threads, args.runtime, args.kernels),
            Classifier(args.classifier, args.threads, args.runtime, args.kernels),
            ChainSettings(tiles_per_frame=args.tiles_per_frame),
        )
        sky = SkyFeed(chain, args.source, args.interval).start()
    app = create_app(classifier, args.deck, args.data, sky)
    print(f"serving on http://{args.host}:{args.port}/ (rounds logged to {args.data / 'rounds.csv'})")
    try:
        serve(app, args.host, args.port)
    finally:
        if sky:
            sky.stop()
    return 0


def run_chain(args: argparse.Namespace) -> int:
    from edge.chain import Chain, ChainSettings, run
    from edge.models import Classifier
    from edge.sources import open_source

    # Models are loaded first so that a missing or corrupt file fails before any frame is read.
    detector = _open_detector(args.detector, args)
    classifier = Classifier(args.classifier, args.threads, args.runtime, args.kernels)
    settings = ChainSettings(
        tiling=args.tiling,
        score_threshold=args.score_threshold,
        reject_threshold=args.reject_threshold,
        min_classify_px=args.min_classify_px,
        rotations=args.rotations,
        annotate=not args.no_annotate,
        annotated_video=args.video,
        save_crops=args.save_crops,
        show=args.show,
        tiles_per_frame=args.tiles_per_frame,
    )
    source = open_source(args.source)
    summary = run(Chain(detector, classifier, settings), source, args.out, args.max_frames)
    for line in summary.lines():
        print(line)
    return 0


class _Images:
    """The readable images among files, folders and globs, as (path, BGR image); unreadable
    ones are warned about and counted."""

    def __init__(self, items: list[str]) -> None:
        from edge.sources import image_inputs

        self.paths = image_inputs(items)
        self.read = 0
        self.skipped = 0

    def __iter__(self):
        import cv2

        for path in self.paths:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                print(f"warning: skipped {path}: unreadable or not an image", file=sys.stderr)
                self.skipped += 1
                continue
            self.read += 1
            yield path, image


def run_detect(args: argparse.Namespace) -> int:
    from edge.chain import Chain, ChainSettings

    detector = _open_detector(args.model, args)
    chain = Chain(detector, None, ChainSettings(tiling=args.tiling, score_threshold=args.score_threshold))
    images = _Images(args.images)
    for path, image in images:
        found = chain.detect(image)
        detections = [
            {
                "box": [round(float(v), 1) for v in box],
                "score": round(float(score), 4),
                "label": detector.labels[int(class_id)],
            }
            for box, score, class_id in zip(found.boxes, found.scores, found.class_ids, strict=True)
        ]
        if args.json:
            print(
                json.dumps(
                    {
                        "image": str(path),
                        "width": image.shape[1],
                        "height": image.shape[0],
                        "detections": detections,
                    }
                )
            )
        else:
            print(f"{path}: {len(detections)} detections")
            for d in detections:
                print(f"  {d['label']} {d['score']:.2f} at {d['box']}")
    return 0 if images.read else 1


def run_classify(args: argparse.Namespace) -> int:
    from edge.models import Classifier

    classifier = Classifier(args.model, args.threads, args.runtime, args.kernels)
    images = _Images(args.images)
    for path, image in images:
        probabilities = classifier.classify([image], rotations=args.rotations)[0]
        best = int(probabilities.argmax())
        probs = {n: round(float(p), 4) for n, p in zip(classifier.labels, probabilities, strict=True)}
        if args.json:
            print(
                json.dumps(
                    {
                        "image": str(path),
                        "label": classifier.labels[best],
                        "score": round(float(probabilities[best]), 4),
                        "probs": probs,
                    }
                )
            )
        else:
            print(f"{path}: {classifier.labels[best]} {probabilities[best]:.2f}")
    return 0 if images.read else 1
