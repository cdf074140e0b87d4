"""Ad hoc probe (docs/verifier.md, real galaxies): the small-galaxy check of `evaluate --detector
--gz2` (detection.centred.small_galaxy_recall: the held-out GZ2 part shrunk into 1280x720 mosaics) for
each detector alone, with its card's verifier, and with its whole-frame twin when the card names one.

  PYTHONPATH=. python scripts/probes/small_real_galaxies.py DETECTOR.tflite [...] [--gz2 DIR]
      [--all | --design] [--shrinks 4,6]

--all reads every image instead of the held-out part (the design probe of session 21 did); --design reads
only the part that is not held out, so that a change can be designed there and the held-out part kept for
judging it (session 27's twin). --shrinks: the mosaics' shrink factors (default: the check's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import detection.centred as centred
from detection.centred import CHECK_SHRINKS
from edge.models import Detector
from galaxy_edge.gz2 import DEFAULT_GZ2_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("detectors", type=Path, nargs="+")
    parser.add_argument("--gz2", type=Path, default=DEFAULT_GZ2_DIR)
    part = parser.add_mutually_exclusive_group()
    part.add_argument("--all", action="store_true", help="every image, not only the held-out part")
    part.add_argument("--design", action="store_true", help="only the images that are not held out")
    parser.add_argument("--shrinks", default=",".join(f"{s:g}" for s in CHECK_SHRINKS))
    args = parser.parse_args()
    shrinks = [float(value) for value in args.shrinks.split(",")]
    if args.all:
        centred.HELD_OUT_EVERY = 1  # every name's hash is 0 modulo 1
    if args.design:
        held_out_part = centred.centred_part
        centred.centred_part = lambda paths, held_out: held_out_part(paths, held_out=not held_out)
    for path in args.detectors:
        for verify, twins in ((False, False), (True, False), (True, True)):
            detector = Detector(path, verify=verify, twins=twins)
            if (verify and detector.verifier is None) or (twins and not detector.frame_models):
                continue
            report = centred.small_galaxy_recall(detector, args.gz2, detector.score_threshold, shrinks)
            rows = "; ".join(
                f"{row['shrink']:g}x recall {row['recall']:.3f}, {row['other_per_cell']:.2f} other per cell"
                for row in report["by_shrink"]
            )
            what = ("with its verifier" if verify else "alone") + (", whole-frame twin" if twins else "")
            print(f"{path} {what} ({report['images']} images): {rows}", flush=True)


if __name__ == "__main__":
    main()
