"""`galaxy-edge annotations ...`: check, split, convert, propose, draw.

Only argparse here; each handler imports its module when run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from galaxy_edge.argtypes import split_fractions


def _labels(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated class names, e.g. galaxy,star")
    return names


def register(verbs: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    parser = verbs.add_parser(
        "annotations",
        help="labelImg annotations: check, split, convert, propose drafts, draw",
        description="Work with labelImg annotations (Pascal VOC XML, or YOLO txt with classes.txt).",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge annotations check data/frames --labels galaxy,star",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    check = actions.add_parser(
        "check",
        help="report every problem in a labelImg folder (exit 1 if any)",
        description="One line per problem, `PATH: reason`; exit 1 when there is any, else a summary.",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge annotations check data/frames --labels galaxy,star --fix",
    )
    check.add_argument("folder", type=Path, help="folder with images and their annotations")
    check.add_argument("--labels", type=_labels, help="allowed class names, comma-separated")
    check.add_argument(
        "--fix",
        action="store_true",
        help="apply safe fixes only (clip boxes, correct size fields); backs up files",
    )
    check.set_defaults(handler=run_check)

    split = actions.add_parser(
        "split",
        help="deterministic train/val/test split stratified by class",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge annotations split data/frames --fractions 0.8,0.1,0.1 --seed 0",
    )
    split.add_argument("folder", type=Path)
    split.add_argument("--out", type=Path, help="where train.txt/val.txt/test.txt go (default FOLDER/splits)")
    split.add_argument("--fractions", type=split_fractions, default=(0.8, 0.1, 0.1), help="train,val,test")
    split.add_argument("--seed", type=int, default=0)
    split.set_defaults(handler=run_split)

    convert = actions.add_parser(
        "convert",
        help="convert between VOC XML, YOLO txt and COCO JSON",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge annotations convert data/frames --to coco --out out/coco",
    )
    convert.add_argument("folder", type=Path)
    convert.add_argument("--to", choices=("voc", "yolo", "coco"), required=True)
    convert.add_argument("--out", type=Path, required=True)
    convert.add_argument("--classes", type=_labels, help="class order for YOLO/COCO (default: sorted names)")
    convert.set_defaults(handler=run_convert)

    propose = actions.add_parser(
        "propose",
        help="draft boxes from source extraction (sep), for review in labelImg",
        description="Background-subtract, extract sources above a threshold, separate stars from galaxies "
        "by their size relative to the PSF, and write one labelImg VOC XML per image.",
        formatter_class=formatter,
        epilog="example:\n"
        "  galaxy-edge annotations propose ../shared/data/sky_frames/*.jpg --out out/drafts --stars",
    )
    propose.add_argument("images", nargs="+", type=Path, help="image or FITS files, or folders of them")
    propose.add_argument("--out", type=Path, required=True)
    propose.add_argument("--thresh", type=float, help="detection threshold in background sigma (default 2)")
    propose.add_argument("--minarea", type=int, help="minimum pixels above the threshold (default 8)")
    propose.add_argument(
        "--deblend-cont", type=float, help="sep's deblending contrast: lower splits more (default 0.0005)"
    )
    propose.add_argument(
        "--hot-mesh",
        type=int,
        help="background cell of the second, 'hot' pass that finds small galaxies in big ones' halos "
        "(default 24 pixels; 0: one pass)",
    )
    propose.add_argument(
        "--star-ratio",
        type=float,
        help="a source is a star when its half-light radius is under this times the stellar locus "
        "(default 1.0; higher: more stars, fewer galaxies)",
    )
    propose.add_argument("--psf-fwhm", type=float, help="PSF FWHM in pixels (default: estimated per frame)")
    propose.add_argument(
        "--filter-fwhm", type=float, help="Gaussian detection filter FWHM (default: sep 3x3)"
    )
    propose.add_argument("--stars", action="store_true", help="also write 'star' boxes for point sources")
    propose.add_argument("--label", default="galaxy", help="class name for extended sources")
    propose.add_argument(
        "--truth", type=Path, help="folder of truth labelImg XML (same names): print precision and recall"
    )
    propose.set_defaults(handler=run_propose)

    draw = actions.add_parser(
        "draw",
        help="draw the boxes of a labelImg folder onto copies of its images",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge annotations draw out/drafts --out out/drafts_png",
    )
    draw.add_argument("folder", type=Path)
    draw.add_argument("--out", type=Path, required=True)
    draw.set_defaults(handler=run_draw)


def run_check(args: argparse.Namespace) -> int:
    from annotations.check import check_dataset

    report = check_dataset(args.folder, labels=args.labels, fix=args.fix)
    for line in report.fixed:
        print(line)
    for problem in report.problems:
        print(problem)
    for line in report.summary_lines():
        print(line, file=sys.stderr if report.problems else sys.stdout)
    if report.problems:
        print(f"{len(report.problems)} problem(s) found", file=sys.stderr)
        return 1
    print("no problems found")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from annotations.split import split_dataset

    split, written = split_dataset(args.folder, args.out, args.fractions, args.seed)
    for name, path in written.items():
        counts = ", ".join(f"{k} {v}" for k, v in sorted(split.class_counts[name].items())) or "no boxes"
        print(f"{name}: {len(split.files[name])} images ({counts}) -> {path}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from annotations.convert import convert_dataset

    written = convert_dataset(args.folder, args.to, args.out, args.classes)
    print(f"wrote {len(written)} file(s) to {args.out}")
    return 0


def _expand_images(items: list[Path]) -> list[Path]:
    from annotations.dataset import find_images
    from galaxy_edge.errors import GalaxyEdgeError
    from galaxy_edge.files import FITS_SUFFIXES

    images: list[Path] = []
    for item in items:
        if item.is_dir():
            images += find_images(item)
            images += sorted(p for p in item.iterdir() if p.name.lower().endswith(FITS_SUFFIXES))
        elif item.is_file():
            images.append(item)
        else:
            raise GalaxyEdgeError(f"{item}: no such file or folder")
    if not images:
        raise GalaxyEdgeError(f"no images found in {', '.join(map(str, items))}")
    return images


def run_propose(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from annotations.propose import ProposalSettings, propose_files

    given = {
        "thresh_sigma": args.thresh,
        "minarea": args.minarea,
        "deblend_cont": args.deblend_cont,
        "star_radius_ratio": args.star_ratio,
    }
    settings = ProposalSettings(
        **{name: value for name, value in given.items() if value is not None},
        psf_fwhm=args.psf_fwhm,
        filter_fwhm=args.filter_fwhm,
        include_stars=args.stars,
        label=args.label,
    )
    if args.hot_mesh is not None:
        settings.hot_mesh = args.hot_mesh or None  # 0: one pass
    images = _expand_images(args.images)
    bar = tqdm(total=len(images), desc="propose", unit="image", file=sys.stderr, mininterval=1)
    counts = {"galaxy": 0, "star": 0}

    def progress(image: Path, annotation) -> None:
        for box in annotation.boxes:
            counts["star" if box.name == settings.star_label else "galaxy"] += 1
        bar.update()

    written = propose_files(images, args.out, settings, progress)
    bar.close()
    stars = f", {counts['star']} star boxes" if args.stars else ""
    print(
        f"wrote {len(written)} draft(s) to {args.out}: {counts['galaxy']} {args.label} boxes{stars}; "
        "review them in labelImg before training"
    )
    if args.truth:
        _print_proposal_scores(written, args.truth, [args.label] + (["star"] if args.stars else []))
    return 0


def _print_proposal_scores(drafts: list[Path], truth_dir: Path, labels: list[str]) -> None:
    from annotations.score import Score, score_boxes
    from annotations.voc import read_voc
    from galaxy_edge.errors import GalaxyEdgeError

    matchers = (
        ("centre match", {"centre_match": True, "iou_threshold": 1.01}),
        ("IoU>=0.5", {"iou_threshold": 0.5}),
    )
    for label in labels:
        for name, kwargs in matchers:
            total = Score()
            for draft in drafts:
                truth_path = truth_dir / draft.name
                if not truth_path.is_file():
                    raise GalaxyEdgeError(f"{truth_path}: no truth annotation for {draft.name}")
                proposals = [b for b in read_voc(draft).boxes if b.name == label]
                truth = [b for b in read_voc(truth_path).boxes if b.name == label]
                total += score_boxes(proposals, truth, **kwargs)
            print(
                f"{label} ({name}): recall {total.recall:.3f} ({total.true_positives} of "
                f"{total.true_positives + total.missed} above the detection limit), "
                f"precision {total.precision:.3f} ({total.false_positives} false positives)"
            )


def run_draw(args: argparse.Namespace) -> int:
    import cv2

    from annotations.dataset import usable_pairs
    from galaxy_edge.draw import color_for, draw_boxes
    from galaxy_edge.errors import GalaxyEdgeError

    args.out.mkdir(parents=True, exist_ok=True)
    pairs = usable_pairs(args.folder)
    for image_path, annotation in pairs:
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image is None:
            raise GalaxyEdgeError(f"{image_path}: image unreadable")
        boxes = [b.xyxy() for b in annotation.boxes]
        draw_boxes(
            image, boxes, [b.name for b in annotation.boxes], [color_for(b.name) for b in annotation.boxes]
        )
        cv2.imwrite(str(args.out / f"{image_path.stem}.png"), image)
    print(f"drew {len(pairs)} image(s) into {args.out}")
    return 0
