#!/usr/bin/env bash
# Retrain mmsearch-tiny from random weights, exactly as shipped (see README.md beside this file):
#   bash mmsearch/models/tiny/train.sh [WORK_DIR]       (THREADS=2 by default: both cores)
# Three stages: question -> page title as text (keywords), question -> page image (reading), then
# scenes, edits, i2t/VQA and fresh pages together, the pages held to the reading model by
# distillation. Each stage's model, train_log.jsonl and mmsearch_train.json sit in
# WORK_DIR/<stage>; the shipped model is WORK_DIR/final.
set -euo pipefail
WORK=${1:-tiny-retrain}
THREADS=${THREADS:-2}
JOINT_STEPS=${JOINT_STEPS:-2400}
mkdir -p "$WORK"
cd "$WORK"
start=$SECONDS
stage() { echo "== $1 ($(( SECONDS - start )) s so far)"; }
synth() { mmsearch datasets make synthetic --format train --size "$@" --image-size 112 --overwrite --no-progress; }

# scenes: 20% of colour x shape pairs never appear in training (--holdout 0.2); pages: a new seed per table
stage "data"
synth 10000 --out sc_a --seed 1 --tasks t2i,composed --holdout 0.2 &    # 10k text->image, 10k edits
synth 20000 --out doc_a --seed 5 --tasks doc --doc-titles &             # pages, and question -> title rows
wait
synth 10000 --out sc_b --seed 3 --tasks t2i --holdout 0.2 &             # 10k text->image
synth 10000 --out sc_d --seed 12 --tasks composed --holdout 0.2 &       # 10k edits
synth 10000 --out doc_d --seed 9 --tasks doc &
wait
synth 2000 --out mix_b --seed 4 --tasks t2i,i2t,vqa --holdout 0.2 &    # 2k each: text->image, image->text, VQA
synth 6000 --out sc_c --seed 6 --tasks composed --holdout 0.2 &         # 6k edits: only the tokenizer's texts
synth 10000 --out doc_e --seed 10 --tasks doc &
# pages with the generic image instruction, as an M-BEIR pool or an index of screenshots encodes them
synth 10000 --out doc_f --seed 11 --tasks doc --doc-candidate image &
wait

# bf16 autocast: 1.3x faster on this CPU (AVX512-BF16); pooling, similarities and the loss stay fp32
COMMON=(--batch-size 96 --learn-temperature --threads "$THREADS" --precision bf16 --save-every 100
        --keep-checkpoints 1 --log-every 20 --no-progress)

# 1. keywords, text only, from random weights: each question's embedding learns its page's title
#    word. The BPE is trained on the later stages' texts too (--vocab-data), so one tokenizer serves
#    them all (sc_c is the edit table of the recipe this one grew from; it only shapes the tokenizer).
stage "1 keywords"
mmsearch train --data doc_a/SynthDocTitles/train.parquet --out s1_keywords \
    --scratch hidden=192,layers=3,heads=6,kv_heads=2,ffn=512,vision_embed=128,vision_depth=3 \
    --vocab-size 900 --scratch-image-size 112 \
    --vocab-data sc_a/train.parquet sc_c/train.parquet mix_b/train.parquet doc_a/train.parquet \
    --lr 1.5e-3 --warmup 20 --max-steps 300 --temperature 0.027 --seed 0 "${COMMON[@]}"

# 2. reading: question -> page image, at a constant learning rate (the next stage raises it again)
stage "2 pages"
mmsearch train --data doc_a/train.parquet doc_d/train.parquet --model s1_keywords --out s2_pages \
    --lr 1e-3 --warmup 20 --schedule constant --max-steps 800 --temperature 0.025 --seed 1 "${COMMON[@]}"

# 3. everything together: 20k text->image, 20k edits, 6k t2i/i2t/VQA and 20k fresh pages (30%), half
#    of them with the generic image instruction. The pages keep s2_pages' embeddings (distillation),
#    so the scene tasks cannot overwrite the reading while they are learnt.
stage "3 scenes + pages"
mmsearch train --data sc_a/train.parquet sc_b/train.parquet sc_d/train.parquet mix_b/train.parquet \
    doc_e/train.parquet doc_f/train.parquet --model s2_pages --out final \
    --distill-from s2_pages --distill-data doc_e/train.parquet doc_f/train.parquet --distill-weight 10 \
    --lr 1.2e-3 --warmup 40 --max-steps "$JOINT_STEPS" --temperature 0.025 --seed 2 "${COMMON[@]}"
stage "done: $WORK/final"
