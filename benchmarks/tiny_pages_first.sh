#!/usr/bin/env bash
# An experimental recipe for mmsearch-tiny that learns to read pages *before* the scenes
# (it is not the shipped model's recipe; see mmsearch/models/tiny/README.md for that and for
# this script's results: 56.7 min on 2 threads; pages R@1 0.53 after stage 2, but stage 3 lost
# half of it and left the scene tasks short of their targets).
#   bash benchmarks/tiny_pages_first.sh [WORK_DIR]      (THREADS=2 by default: both cores)
# (The card's `J2` ran the first two stages of mmsearch/models/tiny/train.sh, then its own stage 3.)
# Each stage's model, log and mmsearch_train.json sit in WORK_DIR/<stage>; the last is WORK_DIR/final.
set -euo pipefail
WORK=${1:-tiny-retrain}
THREADS=${THREADS:-2}
mkdir -p "$WORK"
cd "$WORK"
start=$SECONDS
stage() { echo "== $1 ($(( (SECONDS - start) / 60 )) min so far)"; }

synth() { mmsearch datasets make synthetic --format train --size "$@" --image-size 112 --overwrite --no-progress; }
stage "data"
# scenes: 20% of colour x shape pairs never appear in training (--holdout 0.2); pages: a new seed per table
synth 10000 --out sc_a --seed 1 --tasks t2i,composed --holdout 0.2 &     # 10k text->image, 10k composed edits
synth 20000 --out doc_a --seed 5 --tasks doc --doc-titles &              # pages, and question -> title rows
wait
synth 4000 --out mix_b --seed 4 --tasks t2i,i2t,vqa --holdout 0.2 &  # 4k each: text->image, image->text, VQA
synth 20000 --out doc_b --seed 7 --tasks doc &
wait
synth 20000 --out doc_c --seed 8 --tasks doc &
synth 10000 --out doc_d --seed 9 --tasks doc &
wait

# bf16 autocast: 1.3x faster on this CPU (AVX512-BF16); pooling, similarities and the loss stay fp32
COMMON=(--batch-size 96 --learn-temperature --threads "$THREADS" --precision bf16 --save-every 100
        --keep-checkpoints 1 --log-every 20 --no-progress)

# 1. keywords, text only, from random weights: each question's embedding learns its page's title word.
#    The BPE is trained on every stage's texts (--vocab-data) so one tokenizer serves them all.
stage "1 keywords"
mmsearch train --data doc_a/SynthDocTitles/train.parquet --out s1_keywords \
    --scratch hidden=192,layers=3,heads=6,kv_heads=2,ffn=512,vision_embed=128,vision_depth=3 \
    --vocab-size 900 --scratch-image-size 112 \
    --vocab-data sc_a/train.parquet mix_b/train.parquet doc_a/train.parquet \
    --lr 1.5e-3 --warmup 20 --max-steps 300 --temperature 0.027 --seed 0 "${COMMON[@]}"

# 2. pages: question -> page image. Reading is learnt far faster before the scene stages
#    (which teach the language model to ignore text in images) than after them.
stage "2 pages"
mmsearch train --data doc_a/train.parquet doc_b/train.parquet doc_c/train.parquet --model s1_keywords \
    --out s2_pages --lr 1e-3 --warmup 20 --max-steps 1400 --temperature 0.025 --seed 1 "${COMMON[@]}"

# 3. scenes and edits, a third of each batch fresh pages to keep the reading (it kept only half)
stage "3 scenes + pages"
mmsearch train --data sc_a/train.parquet doc_d/train.parquet --model s2_pages --out s3_scenes \
    --lr 1e-3 --warmup 0.04 --max-steps 1400 --temperature 0.025 --seed 2 "${COMMON[@]}"

# 4. image->text and VQA at a low learning rate, the earlier tasks still in the mix
stage "4 all tasks"
mmsearch train --data sc_a/train.parquet mix_b/train.parquet doc_d/train.parquet --model s3_scenes --out final \
    --lr 3e-4 --warmup 20 --max-steps 300 --temperature 0.025 --seed 3 "${COMMON[@]}"

stage "done: $WORK/final"
