#!/usr/bin/env bash
# Your own data, from files to a pretrained encoder, a fine-tuned model and a map (docs/data.md).
# Run from the repository root; writes own-data/ and runs/own-data/. Every `cromss` line below is run
# by tests/test_own_data_walkthrough.py on the real Sen1Floods11 chip.
set -euo pipefail
CHIP=${CHIP:-../shared/data/sen1floods11/Spain_7370579}   # real S1 + S2 + hand label (Bonafilia et al. 2020)
mkdir -p own-data

# 0. a cheap noisy label: NDWI > 0 on Sentinel-2 (in practice: your own label source)
python docs/examples/ndwi_label.py ${CHIP}_S2Hand.tif own-data/ndwi.tif

# 1. tiles of the scene: images, noisy label, and the hand label as the reference of the noisy one
cromss data tile --input s2=${CHIP}_S2Hand.tif --input s1=${CHIP}_S1Hand.tif --input noisy=own-data/ndwi.tif --input hand=${CHIP}_LabelHand.tif --size 128 --prefix spain --out own-data/floods

# 2. describe them (dataset.yaml + samples.csv + band statistics), then look
cromss data index own-data/floods --image s2='s2/*.tif' --image s1='s1/*.tif' --label 'noisy/*.tif' --reference 'hand/*.tif' --classes configs/own-data/water-classes.csv --test-split configs/own-data/test-tiles.txt
cromss data inspect own-data/floods

# 3. CromSS pretraining on the noisy label (prints the noise-flagging ROC-AUC against the reference)
cromss pretrain --config configs/own-data/floods-pretrain-smoke.yaml
cromss export-encoder runs/own-data/floods-midf --modality s2 own-data/floods-s2.safetensors

# 4. the downstream task: the hand label, same tiles (S2 only), 4 test tiles
cromss data tile --input s2=${CHIP}_S2Hand.tif --input hand=${CHIP}_LabelHand.tif --size 128 --prefix spain --out own-data/floods-hand
cromss data index own-data/floods-hand --image s2='s2/*.tif' --label 'hand/*.tif' --classes configs/own-data/water-classes.csv --test-split configs/own-data/test-tiles.txt
cromss finetune --config configs/own-data/floods-finetune-smoke.yaml --encoder own-data/floods-s2.safetensors --label cromss
cromss evaluate runs/own-data/finetune/floods-hand/cromss/finetuned/seed0 --split test

# 5. a map of the whole scene on its own grid, with the run's statistics, classes and colours
cromss predict --checkpoint runs/own-data/finetune/floods-hand/cromss/finetuned/seed0 --s2 ${CHIP}_S2Hand.tif --out own-data/floods-map.tif
