#!/usr/bin/env bash
# The detector's GPU training phase: Keras on JAX (or PyTorch), a dozen processes making the
# augmented batches, and a cosine schedule fitted to a wall-clock budget (--time-budget). It
# continues from the shipped model on the same frames and split as `make train`, so the
# checkpoint is still chosen by validation loss. TensorFlow is not needed; Keras 3.15 is.
#
# Environment: PY (a python with JAX and CUDA, default python3), KERAS_BACKEND (default jax),
# DATA, FROM, OUT, BUDGET (seconds of training, default 480), WORKERS (default 13), LR (peak
# learning rate, default 6e-4), BATCH (default 32), STEPS (per epoch, default 250). Run on an H200
# with 16 cores (the machine's JAX, Keras 3.15.1 installed from wheels, 2026-11-27): the first epoch
# takes about a minute to compile, then 40-45 ms a step of 32 crops (about 750 crops/s, the 13
# workers' pace; BUDGET=110 STEPS=100); README, detector section, has the run's figures.
set -euo pipefail

PY=${PY:-python3}
DATA=${DATA:-data/det_train}
FROM=${FROM:-models/galaxy_detector.keras}
OUT=${OUT:-runs/detector_gpu}
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
export PYTHONUNBUFFERED=1

$PY -m galaxy_edge train --detector --data "$DATA" --split 0.9,0.1,0 --from "$FROM" \
    --batch-size "${BATCH:-32}" --learning-rate "${LR:-6e-4}" --steps-per-epoch "${STEPS:-250}" \
    --workers "${WORKERS:-13}" --time-budget "${BUDGET:-480}" --out "$OUT"
