#!/usr/bin/env bash
# The real-image study of docs/real_image_refinement.md: energy heads on the frozen features of a COCO-trained
# YOLOX-nano (the paper's setting), with the paper's Gaussian proposal or the detector-aware one, against the
# IoU-Net head, refining YOLOX-nano's and FastestDet's detections on 128 held-out COCO val2017 images.
#
#   bash references/detection/yolox_refinement.sh [STEP ...]     (default: every step, in order; each is resumable)
#
# Steps: convert, detect, fit, train, tune, bench, time. Outputs go under $W (default output/yolox_study).
# Nothing here is chosen on the evaluation images: the detector-aware proposal is fitted to YOLOX-nano's output on
# the training images, and the refinement steps / step sizes are chosen on its output on the 24 held-out training
# images (coco128_train2017_holdout). Training runs JOBS at a time, one thread each (about 8 min a run on
# an idle core).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
W=${W:-output/yolox_study}
PY=${PY:-python}
JOBS=${JOBS:-2}
SEEDS=${SEEDS:-"0 1 2"}
DATA=${EBM_SHARED_DATA:-../shared/data}
WEIGHTS_DIR=${EBM_WEIGHTS_DIR:-../shared/weights}
export OMP_NUM_THREADS=1
mkdir -p "$W"
YOLOX="$W/yolox_nano.pth"
REFINER=configs/COCO-Refine
dets() { echo "$W/det_$1/inference/$1/coco_instances_results.json"; }

convert() {
  [[ -f $YOLOX ]] || $PY tools/convert_yolox_onnx.py "$WEIGHTS_DIR/yolox_nano.onnx" --output "$YOLOX"
}

detect() {  # YOLOX-nano's own detections on the training images (COCO results files)
  for ds in coco128_train2017_fit coco_tiny_train2017 coco128_train2017_holdout; do
    [[ -f $(dets $ds) ]] || $PY tools/train_net.py --config-file configs/COCO-Detection/yolox_nano.yaml --eval-only \
        MODEL.WEIGHTS "$YOLOX" DATASETS.TEST "('$ds',)" OUTPUT_DIR "$W/det_$ds"
  done
}

fit() {  # the detector-aware proposal, fitted on the refiner's own training images
  [[ -f $W/yolox_nano_residuals.json ]] || $PY tools/fit_detector_proposal.py \
      --dataset coco128_train2017_fit coco_tiny_train2017 \
      --detections "$(dets coco128_train2017_fit)" "$(dets coco_tiny_train2017)" --output "$W/yolox_nano_residuals.json"
}

train_one() {  # VARIANT SEED
  local variant=$1 seed=$2 cfg extra=()
  case $variant in
    ebm) cfg=$REFINER/ebm_refiner_yolox_nano.yaml ;;
    iounet) cfg=$REFINER/iounet_refiner_yolox_nano.yaml ;;
    ebm_detprop) cfg=$REFINER/ebm_refiner_yolox_nano.yaml
                 extra=(MODEL.EBM.DETECTOR_PROPOSAL.FILE "$W/yolox_nano_residuals.json") ;;
  esac
  local out="$W/runs/${variant}_s$seed"
  [[ -f $out/model_final.pth ]] && return 0
  # 400 iterations of 4 images (about 13 passes over the 120 training images): half the MobileNetV2 refiner's
  # schedule, so that 9 runs fit on 2 CPU cores; only the head trains, on fixed features.
  $PY tools/train_net.py --config-file "$cfg" MODEL.WEIGHTS "$YOLOX" SEED "$seed" OUTPUT_DIR "$out" \
      SOLVER.MAX_ITER 400 SOLVER.STEPS "(300, 360)" "${extra[@]}" \
      > "$W/runs/${variant}_s$seed.log" 2>&1
}
export -f train_one
export W YOLOX REFINER PY

train() {
  mkdir -p "$W/runs"
  for s in $SEEDS; do for v in ebm iounet ebm_detprop; do echo "$v $s"; done; done \
    | xargs -P "$JOBS" -L 1 bash -c 'train_one "$0" "$1"'
}

tune() {  # steps and step sizes on YOLOX-nano's output on held-out training images, seed-0 heads
  for v in ebm ebm_detprop iounet; do
    local sizes=(2.5e-5,1e-4 5e-5,2e-4 1e-4,4e-4 2e-4,8e-4 4e-4,1.6e-3)
    [[ $v == iounet ]] && sizes=(1e-3,1e-3 2.5e-3,2.5e-3 5e-3,5e-3 1e-2,1e-2 2e-2,2e-2)
    local cfg=$W/runs/${v}_s0/config.yaml
    [[ -f $W/tune_$v.json ]] || $PY tools/tune_refinement.py --config-file "$cfg" --weights "$W/runs/${v}_s0/model_final.pth" \
        --dataset coco128_train2017_holdout --detections "$(dets coco128_train2017_holdout)" \
        --steps 3 10 --step-sizes "${sizes[@]}" --json "$W/tune_$v.json" --threads 1 > "$W/tune_$v.log" 2>&1
  done
}

bench() {  # unrefined / EBM / IoU-Net on both detectors' val2017 detections, 3 seeds, per-box significance
  local runs_ebm=() runs_det=() runs_iou=()
  for s in $SEEDS; do runs_ebm+=("$W/runs/ebm_s$s"); runs_det+=("$W/runs/ebm_detprop_s$s"); runs_iou+=("$W/runs/iounet_s$s"); done
  # the Gaussian-proposal EBM with the IoU-Net baseline; the detector-aware EBM on its own (same unrefined rows)
  for pair in "ebm:${runs_ebm[*]}" "ebm_detprop:${runs_det[*]}"; do
    local name=${pair%%:*} runs=${pair#*:} iou=()
    [[ $name == ebm ]] && iou=(--iounet-runs "${runs_iou[@]}" --iounet-settings "$W/tune_iounet.json")
    [[ -f $W/bench_$name.json ]] || $PY tools/real_detection_benchmark.py \
        --ebm-runs $runs --ebm-settings "$W/tune_$name.json" "${iou[@]}" \
        --detections yolox_nano="$DATA/coco/detections/yolox_nano_val2017_first128.json" \
                     fastestdet="$DATA/coco/detections/fastestdet_val2017_first128.json" \
        --json "$W/bench_$name.json" --per-box-errors "$W/per_box_$name" > "$W/bench_$name.log" 2>&1
  done
}

STEPS=("$@")
[[ ${#STEPS[@]} -gt 0 ]] || STEPS=(convert detect fit train tune bench)
for step in "${STEPS[@]}"; do echo "== $step"; "$step"; done
