#!/bin/bash
# The standing checks a change to the detector-verifier pair is judged by (docs/verifier.md, "How a
# change is judged"): a candidate pair against the shipped one, each figure by the command that the
# rules in docs/ quote. Write the rule (thresholds) down before running this.
#
#   scripts/probes/standing_checks.sh CANDIDATE_DIR FRESH_FRAMES [HELD_OUT_FRAMES]
#
# CANDIDATE_DIR holds galaxy_detector_int8.tflite whose card names its verifier (a copy of models/
# with the change); FRESH_FRAMES is `galaxy-edge simulate frames --n 1000 --seed S` of a seed no rule
# has used; HELD_OUT_FRAMES defaults to data/det_test (`make train`'s, or `simulate frames --n 40
# --seed 200`). Needs ../shared/data (GZ2 images, the SDSS field) and the Pi userland tool for the
# chain's count. About 12 minutes here. The Pi userland agreement (tests/test_pi_userland.py) runs on
# the shipped files, so it comes after adopting.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 2 ] || { sed -n 5,13p "$0"; exit 2; }
CANDIDATE=$1/galaxy_detector_int8.tflite
FRESH=$2
HELD_OUT=${3:-data/det_test}
SHIPPED=models/galaxy_detector_int8.tflite
PYTHON=${PYTHON:-.venv/bin/python}
for path in "$CANDIDATE" "$FRESH" "$HELD_OUT"; do
    [ -e "$path" ] || { echo "$path: not found" >&2; exit 2; }
done
quiet() { grep -v "INFO\|WARN\|W0000\|I0000\|^harvest\|^block" || true; }

echo "== 1. fresh frames ($FRESH): shipped, then candidate; mAP@0.5 / mAP@0.5:0.95 ($(date +%T))"
PYTHONPATH=. $PYTHON scripts/probes/paired_blocks.py "$SHIPPED" "$CANDIDATE" "$FRESH" 2>&1 | quiet
echo "== 2. small real galaxies (held-out GZ2 part in mosaics) ($(date +%T))"
PYTHONPATH=. $PYTHON scripts/probes/small_real_galaxies.py "$SHIPPED" "$CANDIDATE" 2>&1 | quiet
echo "== 3. obvious galaxies on the real Hubble sample (the shipped pair keeps 7 of 8)"
PYTHONPATH=. $PYTHON scripts/probes/verifier_real_frames.py --detector "$CANDIDATE" 2>&1 | quiet | tail -1
echo "== 4. held-out frames, real GZ2 central galaxies, the SDSS field ($(date +%T))"
$PYTHON -m galaxy_edge.cli evaluate --detector --model "$CANDIDATE" --data "$HELD_OUT" \
    --gz2 ../shared/data/gz2_kaggle_1400 --sky-frame ../shared/data/sky_frames/sdss_1045_301_2_129.jpg \
    --out "$1/standing_eval" 2>&1 | quiet | tail -7
echo "== 5. the chain's arm64 instructions on the 1280x720 sample ($(date +%T))"
$PYTHON -m galaxy_edge.cli bench --arm-icount-only --detector "$CANDIDATE" --json "$1/icount.json" 2>&1 \
    | quiet | tail -1
grep "chain_1280x720" "$1/icount.md"
echo "== done ($(date +%T))"
