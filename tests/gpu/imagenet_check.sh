#!/usr/bin/env bash
# The ImageNet checks that need a GPU (issue 20, point 4), as one prepared run on a lent device:
#   bash .device/setup.sh && PYTHONPATH=. bash tests/gpu/imagenet_check.sh
# 1. make bench MODE=imagenet on synthetic JPEGs of ImageNet's size: the input paths alone (torchvision's
#    reference, our PIL path, decode_jpeg on the GPU) and training per GPU for ResNet-18/34 at 224x224;
# 2. one ImageNet cell on the GPU through torchrun (NCCL, every GPU visible, 2 epochs of a practice
#    folder at the paper's view sizes): the GPU path of the loop end to end.
# Results go to $OUT (the device tool's folder), else to ./gpu-check.
set -euo pipefail
out=${OUT:-gpu-check}
mkdir -p "$out"
scratch=$(mktemp -d)
python - <<'PY' | tee "$out/device.txt"
import torch, torchvision
print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name(0), torch.cuda.device_count())
PY
python -m resnet.training.imagenet_bench --data synthetic:4096 --workers 8 2>&1 | tee "$out/bench.txt"
python -m resnet.training.imagenet_bench --data synthetic:1000 --write-synthetic "$scratch/practice"
gpus=$(python -c "import torch; print(max(1, torch.cuda.device_count()))")
python -m torch.distributed.run --standalone --nproc_per_node "$gpus" -m resnet.training.imagenet_loop \
    data="$scratch/practice" model=resnet18 shortcut=A epochs=2 lr_drop_epochs=1 batch_size=$((32 * gpus)) \
    world_size="$gpus" mean_images=200 workers=4 study=gpu-check tracking_uri="sqlite:///$scratch/mlflow.db" \
    2>&1 | tee "$out/cell.txt"
grep -q "MLflow run" "$out/cell.txt"
echo "gpu checks done" | tee -a "$out/cell.txt"
