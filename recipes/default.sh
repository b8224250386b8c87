#!/usr/bin/env bash
# The shipped default models, reproduced from ../shared/data on a CPU: recipes/default.sh [DATA_ROOT]
#
#   1. MLM pre-training of a small RoFormer (recipes/mlm_small.toml)          -> runs/mlm_small/model
#   2. CLUENER NER (10 types, Efficient GlobalPointer) from it                -> runs/ner_cluener/best
#   3. STS-B similarity (CoSENT) from it                                      -> runs/sim_stsb/best
#   4. BERT-whitening fitted on unlabelled sentences (news titles + STS-B train sentences),
#      k chosen on STS-B dev                                                  -> stored in runs/sim_stsb/best
#   5. export: the CPU bundle (int8 NER + fp32 similarity) shipped in service/bundles/default, a GPU
#      bundle (fp16 + fp32) in runs/bundle_gpu, an all-int8 bundle for the comparison in runs/bundle_int8
#   6. evaluation of the bundles (int8, fp32, fp16) on the dev sets, training metrics -> metrics/*.json (committed)
#
# Every step resumes (--resume) or is skipped when its output exists, so the script can be rerun after
# an interruption. Training texts only: the dev files are used for model selection and reporting.
# Wall times on 2 CPU cores are in the README ("Models").
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
RUN="${RUN:-.venv/bin/ropenlp}"
TERMS_CLUENER="research use; cite CLUENER2020 (arXiv:2001.04351); no license file in the source"
TERMS_STSB="CNSD Chinese STS-B: academic research only, no commercial use"
TERMS_CORPUS="research use: see ../shared/data/corpus_zh/README.md for each source's terms"

$RUN train mlm recipes/mlm_small.toml --data.root "$DATA" --resume
# NER and similarity side by side, one thread each (small batches use 2 cores poorly)
mkdir -p runs/ner_cluener runs/sim_stsb
$RUN train ner recipes/ner_cluener.toml --data.root "$DATA" --resume >> runs/ner_cluener/train.out 2>&1 & ner=$!
$RUN train sim recipes/sim_stsb.toml --data.root "$DATA" --resume >> runs/sim_stsb/train.out 2>&1 & sim=$!
wait $ner || { echo "NER training failed: see runs/ner_cluener/train.out" >&2; exit 1; }
wait $sim || { echo "similarity training failed: see runs/sim_stsb/train.out" >&2; exit 1; }
if ! grep -q '"whitening"' runs/sim_stsb/best/metrics.json 2>/dev/null; then
    $RUN train whitening --model runs/sim_stsb/best \
        --sentences "$DATA/thucnews_titles/titles.txt" --sentences "$DATA/stsb_zh/train.tsv" \
        --eval "$DATA/stsb_zh/dev.tsv" --k 64,96,128,192,256 --metrics metrics/whitening_sim_stsb.json
fi

provenance=(--data "CLUENER2020 train split (NER)=$TERMS_CLUENER" --data "Chinese STS-B train (similarity)=$TERMS_STSB"
            --data "corpus_zh + THUCNews titles (MLM pre-training, whitening)=$TERMS_CORPUS")
# The CPU bundle: int8 NER, fp32 similarity (int8 noise in the encoder is amplified by whitening's
# 1/sqrt(eigenvalue) scaling: the int8 similarity graph is exported below only to measure that).
$RUN export -m runs/ner_cluener/best -m runs/sim_stsb/best -o service/bundles/default \
    -p ner=int8 -p similarity=fp32 --name ropenlp-default-small --overwrite "${provenance[@]}"
$RUN export -m runs/ner_cluener/best -m runs/sim_stsb/best -o runs/bundle_gpu -p fp16 -p fp32 \
    --name ropenlp-default-small-gpu --overwrite "${provenance[@]}"
$RUN export -m runs/ner_cluener/best -m runs/sim_stsb/best -o runs/bundle_int8 -p int8 \
    --name ropenlp-default-small-int8 --overwrite "${provenance[@]}"

sim_dev=(--data "$DATA/stsb_zh/dev.tsv" --data "$DATA/lcqmc/dev.tsv" --data "$DATA/bq/dev.tsv"
         --data "$DATA/pawsx/dev.tsv" --data "$DATA/atec/dev.tsv")
for p in int8 fp32 fp16; do
    b=runs/bundle_gpu; [ "$p" = int8 ] && b=runs/bundle_int8
    $RUN evaluate ner --bundle "$b" --precision "$p" --data "$DATA/cluener/dev.json" --out "metrics/cluener_dev_$p.json"
    $RUN evaluate sim --bundle "$b" --precision "$p" "${sim_dev[@]}" --out "metrics/sim_dev_$p.json"
done

# the training runs' own metrics and resolved configs, beside the evaluations
for r in mlm_small ner_cluener sim_stsb; do
    cp "runs/$r/metrics.json" "metrics/train_$r.json"
    cp "runs/$r/config.resolved.toml" "metrics/train_$r.config.toml"
done
