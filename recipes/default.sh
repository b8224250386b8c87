#!/usr/bin/env bash
# The shipped models, reproduced from ../shared/data on a CPU: recipes/default.sh [DATA_ROOT]
#
#   1. MLM pre-training of a small RoFormer, stage 1 (recipes/mlm_small.toml, 0.85 epoch)   -> runs/mlm_small/model
#   2. stage 2 (recipes/mlm_long.toml, 1.5 more epochs, one thread), beside
#      the nested medical NER (CMeEE, 9 types) fine-tuned from stage 1 (one thread)         -> runs/ner_cmeee/best
#   3. CLUENER NER (10 types, GlobalPointer + EMA, flat decoding) from stage 2, beside
#      STS-B similarity (CoSENT) from stage 2                                               -> runs/ner_cluener/best
#                                                                                           -> runs/sim_stsb/best
#   4. similarity dev scores before whitening; BERT-whitening fitted on unlabelled sentences
#      (news titles + STS-B train sentences), k chosen on STS-B dev                          -> in runs/sim_stsb/best
#   5. export: the CPU bundles shipped in the repository (int8): service/bundles/default (NER + similarity)
#      and service/bundles/medical (CMeEE NER); GPU bundles (fp16 + fp32) in runs/bundle_gpu, runs/bundle_medical_gpu
#   6. evaluation of every bundle and precision on the dev sets, training metrics -> metrics/*.json (committed)
#
# Every step resumes (--resume) or is skipped when its output exists, so the script can be rerun after
# an interruption. Training texts only: the dev files are used for model selection and reporting.
# Wall times on 2 CPU cores are in docs/models.md. research/runs.sh has the experiments behind
# the choices (docs/research.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
RUN="${RUN:-.venv/bin/ropenlp}"
TERMS_CLUENER="research use; cite CLUENER2020 (arXiv:2001.04351); no license file in the source"
TERMS_CMEEE="CHIP-2020 task 1 / CBLUE CMeEE: research use, distributed via Alibaba Tianchi (dataset 95414) after registration; redistribution rights unclear (the data itself is not shipped)"
TERMS_STSB="CNSD Chinese STS-B: academic research only, no commercial use"
TERMS_CORPUS="research use: see ../shared/data/corpus_zh/README.md for each source's terms"

side_by_side() {  # side_by_side OUT1 "CMD1" OUT2 "CMD2": two one-thread runs at once, logs in OUT/train.out
    mkdir -p "$1" "$3"
    eval "$2" >> "$1/train.out" 2>&1 & local a=$!
    eval "$4" >> "$3/train.out" 2>&1 & local b=$!
    wait $a || { echo "failed: see $1/train.out" >&2; exit 1; }
    wait $b || { echo "failed: see $3/train.out" >&2; exit 1; }
}

$RUN train mlm recipes/mlm_small.toml --data.root "$DATA" --resume
side_by_side runs/mlm_long "$RUN train mlm recipes/mlm_long.toml --data.root '$DATA' --resume" \
             runs/ner_cmeee "$RUN train ner recipes/ner_cmeee.toml --data.root '$DATA' --resume"
side_by_side runs/ner_cluener "$RUN train ner recipes/ner_cluener.toml --data.root '$DATA' --resume" \
             runs/sim_stsb "$RUN train sim recipes/sim_stsb.toml --data.root '$DATA' --resume"

sim_dev=(--data "$DATA/stsb_zh/dev.tsv" --data "$DATA/lcqmc/dev.tsv" --data "$DATA/bq/dev.tsv"
         --data "$DATA/pawsx/dev.tsv" --data "$DATA/atec/dev.tsv")
if ! grep -q '"whitening"' runs/sim_stsb/best/metrics.json 2>/dev/null; then
    $RUN evaluate sim --model runs/sim_stsb/best "${sim_dev[@]}" --out metrics/sim_dev_no_whitening.json
    $RUN train whitening --model runs/sim_stsb/best \
        --sentences "$DATA/thucnews_titles/titles.txt" --sentences "$DATA/stsb_zh/train.tsv" \
        --eval "$DATA/stsb_zh/dev.tsv" --k 64,96,128,192,256 --metrics metrics/whitening_sim_stsb.json
fi

general=(--data "CLUENER2020 train split (NER)=$TERMS_CLUENER" --data "Chinese STS-B train (similarity)=$TERMS_STSB"
         --data "corpus_zh + THUCNews titles (MLM pre-training, whitening)=$TERMS_CORPUS")
medical=(--data "CMeEE train split (nested medical NER)=$TERMS_CMEEE"
         --data "corpus_zh + THUCNews titles (MLM pre-training)=$TERMS_CORPUS")
# int8 is static: activation ranges calibrated on 256 training texts per task (seed 0), batch invariant
$RUN export -m runs/ner_cluener/best -m runs/sim_stsb/best -o service/bundles/default -p int8 \
    --calibration-data "ner=$DATA/cluener/train.json" --calibration-data "similarity=$DATA/stsb_zh/train.tsv" \
    --name ropenlp-default-small --overwrite "${general[@]}"
$RUN export -m runs/ner_cluener/best -m runs/sim_stsb/best -o runs/bundle_gpu -p fp16 -p fp32 \
    --name ropenlp-default-small-gpu --overwrite "${general[@]}"
$RUN export -m runs/ner_cmeee/best -o service/bundles/medical -p int8 --name ropenlp-medical-small --overwrite \
    --calibration-data "ner=$DATA/cmeee/train.jsonl" "${medical[@]}"
$RUN export -m runs/ner_cmeee/best -o runs/bundle_medical_gpu -p fp16 -p fp32 --name ropenlp-medical-small-gpu \
    --overwrite "${medical[@]}"

for p in int8 fp32 fp16; do
    b=runs/bundle_gpu; m=runs/bundle_medical_gpu
    [ "$p" = int8 ] && { b=service/bundles/default; m=service/bundles/medical; }
    $RUN evaluate ner --bundle "$b" --precision "$p" --data "$DATA/cluener/dev.json" --out "metrics/cluener_dev_$p.json"
    $RUN evaluate sim --bundle "$b" --precision "$p" "${sim_dev[@]}" --out "metrics/sim_dev_$p.json"
    $RUN evaluate ner --bundle "$m" --precision "$p" --data "$DATA/cmeee/dev.jsonl" --out "metrics/cmeee_dev_$p.json"
done

# the training runs' own metrics and resolved configs, beside the evaluations
for r in mlm_small mlm_long ner_cluener ner_cmeee sim_stsb; do
    cp "runs/$r/metrics.json" "metrics/train_$r.json"
    cp "runs/$r/config.resolved.toml" "metrics/train_$r.config.toml"
done
