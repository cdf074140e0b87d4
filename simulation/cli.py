"""`galaxy-edge simulate ...`: GalSim-rendered stamps and sky frames with exact labels."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from galaxy_edge.argtypes import width_height


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return number


def register(verbs: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    parser = verbs.add_parser(
        "simulate",
        help="GalSim-rendered Galaxy10 stamps and sky frames with exact labels",
        description="Render labelled training and test data with GalSim.",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge simulate stamps --n 2000 --out data/sim_stamps",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)

    stamps = kinds.add_parser(
        "stamps",
        help="labelled galaxy stamps of the ten Galaxy10 classes (.h5 like astroNN, or PNG folders)",
        formatter_class=formatter,
        epilog="example:\n"
        "  galaxy-edge simulate stamps --scheme decals --n 2000 --size 69 --seed 0 --out data/sim_stamps",
    )
    stamps.add_argument("--scheme", choices=("decals", "sdss"), default="decals")
    stamps.add_argument("--n", type=_positive, required=True, help="number of stamps")
    stamps.add_argument("--size", type=_positive, default=69, help="stamp side in pixels")
    stamps.add_argument("--seed", type=int, default=0)
    stamps.add_argument(
        "--balanced", action="store_true", help="equal counts per class (default: real proportions)"
    )
    stamps.add_argument(
        "--format",
        choices=("h5", "png", "jpg"),
        default="h5",
        help="h5 (astroNN layout) or one folder per class",
    )
    stamps.add_argument("--workers", type=_positive, help="processes (default: all cores)")
    stamps.add_argument("--out", type=Path, required=True, help="output folder")
    stamps.set_defaults(handler=run_stamps)

    frames = kinds.add_parser(
        "frames",
        help="wide sky frames with stars and galaxies, labelImg XML and a truth table",
        formatter_class=formatter,
        epilog="example:\n"
        "  galaxy-edge simulate frames --n 20 --size 1280x720 --seed 0 --out data/sim_frames --stars",
    )
    frames.add_argument("--n", type=_positive, required=True, help="number of frames")
    frames.add_argument("--size", type=width_height, default=(1280, 720), help="WIDTHxHEIGHT")
    frames.add_argument("--seed", type=int, default=0)
    frames.add_argument("--scheme", choices=("decals", "sdss"), default="decals")
    frames.add_argument(
        "--labels",
        choices=("galaxy", "galaxy10"),
        default="galaxy",
        help="box class: 'galaxy', or each galaxy's Galaxy10 class name",
    )
    frames.add_argument("--stars", action="store_true", help="also write 'star' boxes")
    frames.add_argument(
        "--look",
        choices=("survey", "cmos"),
        default="survey",
        help="camera look: SDSS-like survey frames, or an amateur colour CMOS rig (coarser pixels, "
        "softer seeing, green Bayer balance, read noise, gamma stretch)",
    )
    frames.add_argument("--format", choices=("jpg", "png"), default="jpg")
    frames.add_argument("--fits", action="store_true", help="also write the linear frame as FITS")
    frames.add_argument("--workers", type=_positive, help="processes (default: all cores)")
    frames.add_argument("--out", type=Path, required=True, help="output folder")
    frames.set_defaults(handler=run_frames)

    sheet = kinds.add_parser(
        "sheet",
        help="contact sheet: simulated stamps beside real GZ2 cutouts at the same scale",
        formatter_class=formatter,
        epilog="example:\n  galaxy-edge simulate sheet --scheme decals --out docs/sim_vs_real_decals.jpg",
    )
    sheet.add_argument("--scheme", choices=("decals", "sdss"), default="decals")
    sheet.add_argument("--per-class", type=_positive, default=6)
    sheet.add_argument("--seed", type=int, default=0)
    sheet.add_argument("--gz2", type=Path, help="GZ2 folder (default ../shared/data/gz2_kaggle_1400)")
    sheet.add_argument("--out", type=Path, required=True, help="PNG to write")
    sheet.set_defaults(handler=run_sheet)


def run_stamps(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from galaxy_edge.schemes import get_scheme
    from simulation.stamps import StampSettings, render_stamps, write_h5, write_image_folders

    settings = StampSettings(scheme=args.scheme, size=args.size, seed=args.seed, balanced=args.balanced)
    started = time.perf_counter()
    with tqdm(total=args.n, desc="stamps", unit="stamp", file=sys.stderr, mininterval=1) as bar:
        images, labels, _ = render_stamps(args.n, settings, args.workers, bar.update)
    elapsed = time.perf_counter() - started
    if args.format == "h5":
        target = write_h5(
            args.out / f"galaxy10_{args.scheme}_sim_{args.size}px_seed{args.seed}.h5",
            images,
            labels,
            args.scheme,
            args.seed,
        )
    else:
        target = write_image_folders(args.out, images, labels, args.scheme, args.format)
    names = get_scheme(args.scheme).names
    counts = ", ".join(f"{names[i]} {int((labels == i).sum())}" for i in range(len(names)))
    print(f"wrote {args.n} stamps to {target} ({args.n / elapsed:.0f} stamps/s): {counts}")
    return 0


def run_frames(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from simulation.frames import FrameSettings, simulate_frames

    width, height = args.size
    settings = FrameSettings(
        width=width,
        height=height,
        seed=args.seed,
        scheme=args.scheme,
        labels=args.labels,
        stars=args.stars,
        image_format=args.format,
        fits=args.fits,
        look=args.look,
    )
    started = time.perf_counter()
    with tqdm(total=args.n, desc="frames", unit="frame", file=sys.stderr, mininterval=1) as bar:
        truth = simulate_frames(args.n, settings, args.out, args.workers, bar.update)
    elapsed = time.perf_counter() - started
    print(
        f"wrote {args.n} frames with labelImg XML to {args.out} ({elapsed / args.n:.2f} s/frame), "
        f"truth in {truth}"
    )
    return 0


def run_sheet(args: argparse.Namespace) -> int:
    from galaxy_edge.gz2 import DEFAULT_GZ2_DIR
    from simulation.contact_sheet import contact_sheet

    path = contact_sheet(args.out, args.scheme, args.per_class, args.seed, args.gz2 or DEFAULT_GZ2_DIR)
    print(f"wrote {path}")
    return 0
