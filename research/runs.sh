#!/usr/bin/env bash
# The experiments behind the README's "What was tried" table (issue: default models), one command each.
# Run from the repository root after recipes/default.sh's MLM stages (runs/mlm_small, runs/mlm_long).
# Each training run takes one thread (two run side by side on 2 cores); times are in the README.
#
#   research/runs.sh [DATA_ROOT]          # trains what is missing (--resume), then evaluates every run
#
# Every NER run is evaluated on CLUENER dev with both decodings, each at its dev-best threshold of one grid
# (evaluate --threshold-grid), so runs compare at their best; the JSON goes to metrics/research/.
# research/summarise.py prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
RUN="${RUN:-.venv/bin/ropenlp}"
PY="${PY:-.venv/bin/python}"
SMALL=(--model.init runs/mlm_small/model)   # the 0.85-epoch encoder (stage 1 only)

train() { local out=$1; shift; mkdir -p "$out"; "$RUN" train "$@" --data.root "$DATA" --output.dir "$out" --resume \
          >> "$out/train.out" 2>&1; }

# CLUENER, 5 epochs, Efficient GlobalPointer: pre-trained encoder vs the same architecture from random weights
train runs/ner_cluener_e5 ner recipes/ner_cluener.toml "${SMALL[@]}" --training.epochs 5 --training.patience 3 \
    --model.head egp
train runs/ner_cluener_scratch_e5 ner recipes/ner_cluener.toml "${SMALL[@]}" --training.epochs 5 --training.patience 3 \
    --model.head egp --model.random_init true
# plain GlobalPointer head (vs ner_cluener_e5); entropy-invariant attention scale log_512(n)/sqrt(d) (vs e5)
train runs/ner_cluener_gp ner recipes/ner_cluener.toml "${SMALL[@]}" --training.epochs 5 --training.patience 3 \
    --model.head gp
train runs/ner_cluener_eis ner recipes/ner_cluener.toml "${SMALL[@]}" --training.epochs 5 --training.patience 3 \
    --model.head egp --model.encoder.entropy_invariant_scale true
# GlobalPointer: 12 epochs (vs gp), + an EMA of the weights (decay 0.999); runs/ner_cluener (the shipped one, recipes/default.sh) is the same 12 epochs
# from the 2.35-epoch encoder
train runs/ner_cluener_e12 ner recipes/ner_cluener.toml "${SMALL[@]}" --training.epochs 12 --training.patience 4 \
    --model.head gp
train runs/ner_cluener_e12_ema ner recipes/ner_cluener.toml "${SMALL[@]}" --training.epochs 12 --training.patience 4 \
    --model.head gp --ner.ema_decay 0.999
# the shipped recipe without the EMA (from the 2.35-epoch encoder)
train runs/ner_cluener_noema ner recipes/ner_cluener.toml --ner.ema_decay 0.0
# CMeEE (nested), from the 0.85-epoch encoder like the shipped runs/ner_cmeee (Efficient GlobalPointer, no EMA):
# plain GlobalPointer, without and with an EMA of the weights (the two CLUENER winners)
train runs/ner_cmeee_gp ner recipes/ner_cmeee.toml --model.head gp
train runs/ner_cmeee_gp_ema ner recipes/ner_cmeee.toml --model.head gp --ner.ema_decay 0.999
# similarity pooling (first-last-avg is the recipe's)
train runs/sim_stsb_cls sim recipes/sim_stsb.toml "${SMALL[@]}" --model.pooling cls
train runs/sim_stsb_mean sim recipes/sim_stsb.toml "${SMALL[@]}" --model.pooling mean
train runs/sim_stsb_fla sim recipes/sim_stsb.toml "${SMALL[@]}"

mkdir -p metrics/research
for r in ner_cluener_e5 ner_cluener_scratch_e5 ner_cluener_gp ner_cluener_eis ner_cluener_e12 ner_cluener_e12_ema ner_cluener_noema \
         ner_cluener; do
    [ -d "runs/$r/best" ] || continue
    for d in nested flat; do
        "$RUN" evaluate ner --model "runs/$r/best" --data "$DATA/cluener/dev.json" --decode "$d" \
            --threshold-grid=-2,-1.5,-1,-0.5,-0.25,0,0.25,0.5,1 --out "metrics/research/${r}_${d}.json" > /dev/null
    done
    cp "runs/$r/config.resolved.toml" "metrics/research/$r.config.toml"
    cp "runs/$r/metrics.json" "metrics/research/$r.train.json"
done
for r in ner_cmeee ner_cmeee_gp ner_cmeee_gp_ema; do
    [ -d "runs/$r/best" ] || continue
    "$RUN" evaluate ner --model "runs/$r/best" --data "$DATA/cmeee/dev.jsonl" --decode nested \
        --threshold-grid=-1,-0.5,-0.25,0,0.25,0.5,1 --out "metrics/research/${r}_nested.json" > /dev/null
    cp "runs/$r/config.resolved.toml" "metrics/research/$r.config.toml"
    cp "runs/$r/metrics.json" "metrics/research/$r.train.json"
done
for r in sim_stsb_cls sim_stsb_mean sim_stsb_fla; do
    [ -d "runs/$r/best" ] || continue
    "$RUN" evaluate sim --model "runs/$r/best" --data "$DATA/stsb_zh/dev.tsv" --out "metrics/research/$r.json" > /dev/null
    cp "runs/$r/config.resolved.toml" "metrics/research/$r.config.toml"
    cp "runs/$r/metrics.json" "metrics/research/$r.train.json"
done
# length generalisation: dev texts joined 4, 8, 16 at a time, one 512-token window each
"$PY" research/length_generalisation.py --model runs/ner_cluener_e5/best --model runs/ner_cluener_eis/best \
    --data "$DATA/cluener/dev.json" --join 1,2,4,8 --decode flat --out metrics/research/length_generalisation.json
"$PY" research/summarise.py

# ------------------------------------------------------------------------------------------------------------------
# Similarity v3 (issue 15), opt in: SIM_V3=1 research/runs.sh [DATA_ROOT]. One command per row lives in
# research/sim_v3.sh (objectives, pooling re-check, whitening table; all five dev sets + mean), from ENCODER
# (default encoders/roformer-zh-v3). Hours of CPU training: it is not part of the runs above.
if [ "${SIM_V3:-0}" = 1 ]; then
    RUN="$RUN" PY="$PY" research/sim_v3.sh all "$DATA"
fi

# Encoder v3 (issue 14), opt in: ENCODER_V3=1 research/runs.sh [DATA_ROOT]. One command per row lives in
# research/pretrain_v3.sh (speed, objectives at equal CPU time, encoder stages, NER on the v3 encoder); hours of
# CPU training, then the evaluations and metrics/research/ JSON that research/summarise.py prints.
if [ "${ENCODER_V3:-0}" = 1 ]; then
    for what in speed objectives stages ner ner3 ner4 soup3 soup4 collect; do
        RUN="$RUN" PY="$PY" research/pretrain_v3.sh "$what" "$DATA"
    done
    "$PY" research/summarise.py
fi
