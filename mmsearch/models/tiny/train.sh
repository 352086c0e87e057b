#!/usr/bin/env bash
# Retrain mmsearch-tiny from random weights, exactly as shipped (see README.md beside this file):
#   bash mmsearch/models/tiny/train.sh [WORK_DIR [STEP ...]]     (THREADS=2 by default: both cores)
# Three stages: question -> page title as text (keywords), question -> page image (reading), then
# scenes, edits, i2t/VQA and fresh pages together, the pages held to the reading model by
# distillation. Each stage's model, train_log.jsonl and mmsearch_train.json sit in
# WORK_DIR/<stage>; the shipped model is WORK_DIR/final.
#
# STEPs run in WORK_DIR, in the order given (default: data keywords reading joint, the recipe):
#   data | keywords | reading | joint   one part of the recipe; each reads what the earlier ones wrote
#   synth SIZE ARGS...                  one more table, made as the recipe makes its own
#   train ARGS...                       one more stage, with the recipe's settings (COMMON below)
# The last two let a variant of the recipe share its data and settings (benchmarks/tiny_pages_first.sh).
# Environment: THREADS (2), JOINT_STEPS (stage 3's steps, 2400), DRY_RUN=1 (print the commands, run nothing).
set -euo pipefail
WORK=${1:-tiny-retrain}
shift $(( $# > 0 ? 1 : 0 ))
THREADS=${THREADS:-2}
JOINT_STEPS=${JOINT_STEPS:-2400}
DRY_RUN=${DRY_RUN:-}
start=$SECONDS

run() {  # a command, or with DRY_RUN set its printout (arguments quoted where the shell needs it)
    if [ -z "$DRY_RUN" ]; then "$@"; return; fi
    local arg out=()
    for arg in "$@"; do [[ $arg =~ ^[A-Za-z0-9_./=,:+-]+$ ]] && out+=("$arg") || out+=("$(printf %q "$arg")"); done
    echo "${out[*]}"
}
stage() { echo "== $1 ($(( SECONDS - start )) s so far)"; }
synth() { run mmsearch datasets make synthetic --format train --size "$@" --image-size 112 --overwrite --no-progress; }
table() { if [ -n "$DRY_RUN" ]; then synth "$@"; else synth "$@" & fi; }  # in the background (printed in order)
await() { local pid; for pid in $(jobs -p); do wait "$pid"; done; }      # the tables; fails if one did
# bf16 autocast: 1.3x faster on this CPU (AVX512-BF16); pooling, similarities and the loss stay fp32
COMMON=(--batch-size 96 --learn-temperature --threads "$THREADS" --precision bf16 --save-every 100
        --keep-checkpoints 1 --log-every 20 --no-progress)
train() { run mmsearch train "$@" "${COMMON[@]}"; }

# scenes: 20% of colour x shape pairs never appear in training (--holdout 0.2); pages: a new seed per table
data() {
    stage "data"
    table 10000 --out sc_a --seed 1 --tasks t2i,composed --holdout 0.2      # 10k text->image, 10k edits
    table 20000 --out doc_a --seed 5 --tasks doc --doc-titles               # pages, and question -> title rows
    await
    table 10000 --out sc_b --seed 3 --tasks t2i --holdout 0.2               # 10k text->image
    table 10000 --out sc_d --seed 12 --tasks composed --holdout 0.2         # 10k edits
    table 10000 --out doc_d --seed 9 --tasks doc
    await
    table 2000 --out mix_b --seed 4 --tasks t2i,i2t,vqa --holdout 0.2      # 2k each: text->image, image->text, VQA
    table 6000 --out sc_c --seed 6 --tasks composed --holdout 0.2           # 6k edits: only the tokenizer's texts
    table 10000 --out doc_e --seed 10 --tasks doc
    # pages with the generic image instruction, as an M-BEIR pool or an index of screenshots encodes them
    table 10000 --out doc_f --seed 11 --tasks doc --doc-candidate image
    await
}

# 1. keywords, text only, from random weights: each question's embedding learns its page's title
#    word. The BPE is trained on the later stages' texts too (--vocab-data), so one tokenizer serves
#    them all (sc_c is the edit table of the recipe this one grew from; it only shapes the tokenizer).
keywords() {
    stage "1 keywords"
    train --data doc_a/SynthDocTitles/train.parquet --out s1_keywords \
        --scratch hidden=192,layers=3,heads=6,kv_heads=2,ffn=512,vision_embed=128,vision_depth=3 \
        --vocab-size 900 --scratch-image-size 112 \
        --vocab-data sc_a/train.parquet sc_c/train.parquet mix_b/train.parquet doc_a/train.parquet \
        --lr 1.5e-3 --warmup 20 --max-steps 300 --temperature 0.027 --seed 0
}

# 2. reading: question -> page image, at a constant learning rate (the next stage raises it again)
reading() {
    stage "2 pages"
    train --data doc_a/train.parquet doc_d/train.parquet --model s1_keywords --out s2_pages \
        --lr 1e-3 --warmup 20 --schedule constant --max-steps 800 --temperature 0.025 --seed 1
}

# 3. everything together: 20k text->image, 20k edits, 6k t2i/i2t/VQA and 20k fresh pages (30%), half
#    of them with the generic image instruction. The pages keep s2_pages' embeddings (distillation),
#    so the scene tasks cannot overwrite the reading while they are learnt.
joint() {
    stage "3 scenes + pages"
    train --data sc_a/train.parquet sc_b/train.parquet sc_d/train.parquet mix_b/train.parquet \
        doc_e/train.parquet doc_f/train.parquet --model s2_pages --out final \
        --distill-from s2_pages --distill-data doc_e/train.parquet doc_f/train.parquet --distill-weight 10 \
        --lr 1.2e-3 --warmup 40 --max-steps "$JOINT_STEPS" --temperature 0.025 --seed 2
}

steps=("$@")
case "${steps[0]:-}" in
    synth|train) ;;
    "") steps=(data keywords reading joint) ;;
    *) for step in "${steps[@]}"; do
           case "$step" in
               data|keywords|reading|joint) ;;
               *) echo "train.sh: unknown step '$step' (expected data, keywords, reading, joint, synth or train)" >&2
                  exit 2 ;;
           esac
       done ;;
esac
if [ -n "$DRY_RUN" ]; then
    run cd "$WORK"
else
    mkdir -p "$WORK"
    cd "$WORK"
fi
case "${steps[0]}" in
    synth|train) "${steps[@]}" ;;
    *) for step in "${steps[@]}"; do "$step"; done
       if [ "${steps[-1]}" = joint ]; then stage "done: $WORK/final"; else stage "done: ${steps[*]}"; fi ;;
esac
