#!/usr/bin/env bash
# The shipped models, reproduced from ../shared/data on a CPU: recipes/default.sh [DATA_ROOT]
#
# encoder v3 (issue 14; recipes/pretrain_v3.toml, masked LM, one thread, each stage its own warm-up and released
# in fp16 as the next one continues from it):
#   1. stage 1: from scratch on 95 M tokens, 1,300 steps (vocabulary of 8,000 pieces built by a 1-step run)
#   2. stage 2: 2,000 more steps from stage 1 (as committed, it drew the data from its beginning again, which
#      later stages no longer do)                                                              -> runs/encoder_v3_s2
#   3. stage 3: 2,000 more steps from stage 2, continuing its data (encoder.json data_position) -> runs/encoder_v3_s3
#   4. stage 4: 2,000 more steps from stage 3, the same way (two threads)                     -> runs/encoder_v3_s4
#   4b. stage 5: 2,000 more steps from stage 4, the same way (two threads)
#                                                           -> runs/encoder_v3_s5, committed as encoders/roformer-zh-v3
# then three one-thread runs side by side: CLUENER from stage 3 (on stage 4 three seeds scored 76.41 on average
# against stage 3's 76.65, averaged 76.77 against 76.96: docs/research.md), CMeEE from stage 4 (its model was
# trained before stage 5 existed) and similarity from stage 5:
#   5. CLUENER NER (10 types, GlobalPointer + EMA + FGM, flat decoding) through an intermediate NER stage on
#      MSRA + Resume (recipes/ner_intermediate.toml)     -> runs/ner_intermediate_s3, runs/ner_cluener_s3_inter_fgm
#      then two more seeds of it from the same start (training.init_seed 42: the head the seed-42 run drew), side
#      by side, and the three averaged into one model, threshold calibrated on dev (ropenlp train average)
#                                                        -> runs/ner_cluener_s3_inter_fgm_seed{1,2}, runs/ner_cluener_s3_soup
#   6. nested medical NER (CMeEE, 9 types, GlobalPointer + EMA + FGM)                   -> runs/ner_cmeee_s4_fgm
#   7. similarity v3: every training pair set in one mixture (recipes/sim_v3.toml, 0.63 of an epoch), with the
#      in-batch softmax over each CoSENT batch's positive pairs (sim.contrastive_weight 1)  -> runs/sim_v3_s5_ibn
#      then, after the NER runs, a second stage over the rest of its epoch: the pairs after its step 2,985
#      (training.data_from), 1,753 steps at peak lr 4e-5, two threads                  -> runs/sim_v3_s5_ibn_rest
#      a third into a second epoch: the same order past the epoch's end, 1,753 steps at peak lr 3e-5
#                                                                                      -> runs/sim_v3_s5_ibn_e2
#      a fourth on through the second epoch, the same way (its data after epoch 1.370) -> runs/sim_v3_s5_ibn_e3
#      and a fifth past its end into the third (its data after epoch 1.740)           -> runs/sim_v3_s5_ibn_e4
#   8. whitening measured on the five dev sets (research/sim_v3.sh whitening: none vs fitted on the task's own
#      or general sentences, k from the JL estimate to the full dimension); the best mean is kept
#                                                                           -> runs/sim_v3_s5_ibn_e4_whitened
#   9. export: the CPU bundles shipped in the repository (int8, static): service/bundles/default (NER + similarity)
#      and service/bundles/medical (CMeEE NER); GPU bundles (fp16 + fp32) in runs/bundle_gpu, runs/bundle_medical_gpu
#  10. evaluation of every bundle and precision on the dev sets, training metrics -> metrics/*.json (committed)
#
# Every step resumes (--resume) or is skipped when its output exists, so the script can be rerun after
# an interruption. Training texts only: the dev files are used for model selection and reporting.
# Wall times on 2 CPU cores are in docs/models.md. research/pretrain_v3.sh, research/sim_v3.sh and
# research/runs.sh have the experiments behind the choices (docs/research.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
RUN="${RUN:-.venv/bin/ropenlp}"
TERMS_CLUENER="research use; cite CLUENER2020 (arXiv:2001.04351); no license file in the source"
TERMS_CMEEE="CHIP-2020 task 1 / CBLUE CMeEE: research use, distributed via Alibaba Tianchi (dataset 95414) after registration; redistribution rights unclear (the data itself is not shipped)"
TERMS_PAIRS="Chinese STS-B (academic research only), BQ, ATEC, AFQMC, OPPO-xiaobu, BUSTM, Tianchi COVID pairs, SimCLUE, QBQTC, Chinese STS, OCNLI, CNLI, CNSD-SNLI, CMNLI, XNLI, CINLID: research / non-commercial use (../shared/data/README.md)"
TERMS_CORPUS="research use: see ../shared/data/README.md for each source's terms (corpus_zh, corpus_more, THUCNews titles)"
MLM=(--mlm.objective mlm --mlm.replace_mask 0.8 --mlm.replace_random 0.1)

side_by_side() {  # side_by_side OUT1 "CMD1" OUT2 "CMD2" ...: one-thread runs at once, logs in OUT/train.out
    local pids=() outs=()
    while [ $# -gt 0 ]; do
        mkdir -p "$1"; eval "$2" >> "$1/train.out" 2>&1 & pids+=($!); outs+=("$1"); shift 2
    done
    local i; for i in "${!pids[@]}"; do wait "${pids[$i]}" || { echo "failed: see ${outs[$i]}/train.out" >&2; exit 1; }; done
}
run() { local out=$1; shift; mkdir -p "$out"; "$@" >> "$out/train.out" 2>&1 || { echo "failed: see $out/train.out" >&2; exit 1; }; }

# 1-4: encoder v3
VOCAB=runs/pretrain_vocab.txt
if [ ! -f "$VOCAB" ]; then
    run runs/pt_vocab "$RUN" train mlm recipes/pretrain_v3.toml --data.root "$DATA" --output.dir runs/pt_vocab \
        --training.max_steps 1 --training.eval_every 0
    cp runs/pt_vocab/vocab.txt "$VOCAB"
fi
PRE=(train mlm recipes/pretrain_v3.toml --data.root "$DATA" --vocab.path "$VOCAB" --resume "${MLM[@]}")
release() { [ -f "$2/encoder.json" ] || "$RUN" train release --model "$1/model" -o "$2" --name "$3" --terms "$TERMS_CORPUS"; }
run runs/pretrain_v3_s1 "$RUN" "${PRE[@]}" --output.dir runs/pretrain_v3_s1 --training.max_steps 1300
release runs/pretrain_v3_s1 runs/encoder_v3_s1 "ropenlp RoFormer zh small v3 (stage 1: MLM, 1,300 steps)"
run runs/pretrain_v3_s2 "$RUN" "${PRE[@]}" --output.dir runs/pretrain_v3_s2 --training.max_steps 2000 \
    --training.eval_every 500 --model.init runs/encoder_v3_s1 --data.continue_position false
release runs/pretrain_v3_s2 runs/encoder_v3_s2 "ropenlp RoFormer zh small v3 (stage 2: MLM, 3,300 steps)"
run runs/pretrain_v3_s3 "$RUN" "${PRE[@]}" --output.dir runs/pretrain_v3_s3 --training.max_steps 2000 \
    --model.init runs/encoder_v3_s2
release runs/pretrain_v3_s3 runs/encoder_v3_s3 "ropenlp RoFormer zh small v3 (stage 3: MLM, 5,300 steps)"
run runs/pretrain_v3_s4 "$RUN" "${PRE[@]}" --output.dir runs/pretrain_v3_s4 --training.max_steps 2000 \
    --model.init runs/encoder_v3_s3 --training.threads 2
release runs/pretrain_v3_s4 runs/encoder_v3_s4 "ropenlp RoFormer zh small v3 (stage 4: MLM, 7,300 steps)"
run runs/pretrain_v3_s5 "$RUN" "${PRE[@]}" --output.dir runs/pretrain_v3_s5 --training.max_steps 2000 \
    --training.eval_every 500 --model.init runs/encoder_v3_s4 --training.threads 2
release runs/pretrain_v3_s5 runs/encoder_v3_s5 "ropenlp RoFormer zh small v3 (stage 5: MLM, 9,300 steps)"
grep -q 'stage 5' encoders/roformer-zh-v3/encoder.json 2>/dev/null || cp -r runs/encoder_v3_s5/. encoders/roformer-zh-v3/

# 5-7: CLUENER (intermediate stage, then FGM) from stage 3, CMeEE (FGM) from stage 4 and similarity from stage 5,
# side by side
S3=runs/encoder_v3_s3 S4=runs/encoder_v3_s4 S5=runs/encoder_v3_s5
NER=(--data.root "'$DATA'" --resume --training.threads 1 --training.adversarial 0.5)  # after `train ner RECIPE`
side_by_side runs/ner_cluener_s3_inter_fgm \
        "mkdir -p runs/ner_intermediate_s3 && $RUN train ner recipes/ner_intermediate.toml --data.root '$DATA' \
             --resume --training.threads 1 --model.init $S3 --output.dir runs/ner_intermediate_s3 \
             >> runs/ner_intermediate_s3/train.out 2>&1 && \
         $RUN train ner recipes/ner_cluener.toml ${NER[*]} --model.init runs/ner_intermediate_s3/best \
             --output.dir runs/ner_cluener_s3_inter_fgm" \
    runs/ner_cmeee_s4_fgm "$RUN train ner recipes/ner_cmeee.toml ${NER[*]} --model.init $S4 --output.dir runs/ner_cmeee_s4_fgm" \
    runs/sim_v3_s5_ibn "$RUN train sim recipes/sim_v3.toml --data.root '$DATA' --output.dir runs/sim_v3_s5_ibn --resume \
        --model.init $S5 --training.threads 1 --training.epochs 0.63 --sim.contrastive_weight 1.0"
CLUENER_SEED=(--model.init runs/ner_intermediate_s3/best --training.init_seed 42)
side_by_side \
    runs/ner_cluener_s3_inter_fgm_seed1 "$RUN train ner recipes/ner_cluener.toml ${NER[*]} ${CLUENER_SEED[*]} \
        --training.seed 1 --output.dir runs/ner_cluener_s3_inter_fgm_seed1" \
    runs/ner_cluener_s3_inter_fgm_seed2 "$RUN train ner recipes/ner_cluener.toml ${NER[*]} ${CLUENER_SEED[*]} \
        --training.seed 2 --output.dir runs/ner_cluener_s3_inter_fgm_seed2"
[ -f runs/ner_cluener_s3_soup/metrics.json ] || $RUN train average runs/ner_cluener_s3_inter_fgm/best \
    runs/ner_cluener_s3_inter_fgm_seed1/best runs/ner_cluener_s3_inter_fgm_seed2/best -o runs/ner_cluener_s3_soup \
    --dev "$DATA/cluener/dev.json" --threshold-grid=-2,-1.5,-1,-0.5,-0.25,0,0.25,0.5,1 --overwrite

# 7b-7e: the similarity run continued, stage after stage: continued NAME FROM STEP LR is a fresh run from FROM's best
# weights whose data goes on where FROM's checkpoint step-STEP stopped (its seeded order, past an epoch's end too)
continued() {
    run "runs/$1" "$RUN" train sim recipes/sim_v3.toml --data.root "$DATA" --output.dir "runs/$1" --resume \
        --model.init "runs/$2/best" --training.threads 2 --sim.contrastive_weight 1.0 --training.max_steps 1753 \
        --training.lr "$4" --training.data_from "runs/$2/checkpoints/step-$3"
}
continued sim_v3_s5_ibn_rest sim_v3_s5_ibn 00002985 4e-5     # 7b: the rest of its epoch (after step 2,985)
continued sim_v3_s5_ibn_e2 sim_v3_s5_ibn_rest 00001753 3e-5  # 7c: into a second epoch (rest ends at epoch 1.000)
continued sim_v3_s5_ibn_e3 sim_v3_s5_ibn_e2 00001753 3e-5    # 7d: on through it (e2 ends at epoch 1.370)
continued sim_v3_s5_ibn_e4 sim_v3_s5_ibn_e3 00001753 3e-5    # 7e: on into a third (e3 ends at epoch 1.740)

# 8: whitening by measurement on the five dev sets (stored in runs/sim_v3_s5_ibn_e4_whitened, or no whitening at all)
[ -d runs/sim_v3_s5_ibn_e4_whitened ] || { research/sim_v3.sh collect "$DATA"
    RUN_WHITENING=sim_v3_s5_ibn_e4 research/sim_v3.sh whitening "$DATA"; }

# 9-10: export and evaluation
general=(--data "CLUENER2020 train split (NER)=$TERMS_CLUENER" --data "sentence-pair and NLI training sets (similarity)=$TERMS_PAIRS"
         --data "corpus_zh + corpus_more + THUCNews titles (MLM pre-training, whitening)=$TERMS_CORPUS"
         --data "MSRA NER (SIGHAN 2006 test split) + Resume NER train (intermediate NER stage)=research use (../shared/data/README.md, ner_more)")
medical=(--data "CMeEE train split (nested medical NER)=$TERMS_CMEEE"
         --data "corpus_zh + corpus_more + THUCNews titles (MLM pre-training)=$TERMS_CORPUS")
# int8 is static: activation ranges calibrated on 256 training texts per task (seed 0), batch invariant;
# similarity: drawn from the pair sets with numeric labels (the whitening step's output has no run config)
simcal=(); for f in stsb_zh/train.tsv bq/train.tsv atec/train.tsv pairs/afqmc/train.tsv pairs/oppo_xiaobu/train.tsv \
                    pairs/simclue_sample/train.tsv; do simcal+=(--calibration-data "similarity=$DATA/$f"); done
$RUN export -m runs/ner_cluener_s3_soup -m runs/sim_v3_s5_ibn_e4_whitened -o service/bundles/default -p int8 \
    --calibration-data "ner=$DATA/cluener/train.json" "${simcal[@]}" --name ropenlp-default-small --overwrite "${general[@]}"
$RUN export -m runs/ner_cluener_s3_soup -m runs/sim_v3_s5_ibn_e4_whitened -o runs/bundle_gpu -p fp16 -p fp32 \
    --name ropenlp-default-small-gpu --overwrite "${general[@]}"
# (CMeEE keeps MinMax ranges: 66.06 against percentile's 66.00 on its stage-3 model, docs/models.md "Static int8")
$RUN export -m runs/ner_cmeee_s4_fgm/best -o service/bundles/medical -p int8 --name ropenlp-medical-small --overwrite \
    --calibration-data "ner=$DATA/cmeee/train.jsonl" --calibration-method minmax "${medical[@]}"
$RUN export -m runs/ner_cmeee_s4_fgm/best -o runs/bundle_medical_gpu -p fp16 -p fp32 --name ropenlp-medical-small-gpu \
    --overwrite "${medical[@]}"

sim_dev=(--data "$DATA/stsb_zh/dev.tsv" --data "$DATA/lcqmc/dev.tsv" --data "$DATA/bq/dev.tsv"
         --data "$DATA/atec/dev.tsv" --data "$DATA/pawsx/dev.tsv")
for p in int8 fp32 fp16; do
    b=runs/bundle_gpu; m=runs/bundle_medical_gpu
    [ "$p" = int8 ] && { b=service/bundles/default; m=service/bundles/medical; }
    $RUN evaluate ner --bundle "$b" --precision "$p" --data "$DATA/cluener/dev.json" --out "metrics/cluener_dev_${p}_v3.json"
    $RUN evaluate sim --bundle "$b" --precision "$p" "${sim_dev[@]}" --out "metrics/sim_dev_${p}_v3.json"
    $RUN evaluate ner --bundle "$m" --precision "$p" --data "$DATA/cmeee/dev.jsonl" --out "metrics/cmeee_dev_${p}_v3.json"
done

# the training runs' own metrics and resolved configs, beside the evaluations
for r in pretrain_v3_s1 pretrain_v3_s2 pretrain_v3_s3 pretrain_v3_s4 pretrain_v3_s5 ner_intermediate_s3 \
         ner_cluener_s3_inter_fgm ner_cluener_s3_inter_fgm_seed1 ner_cluener_s3_inter_fgm_seed2 ner_cmeee_s4_fgm sim_v3_s5_ibn \
         sim_v3_s5_ibn_rest sim_v3_s5_ibn_e2 sim_v3_s5_ibn_e3 sim_v3_s5_ibn_e4; do
    cp "runs/$r/metrics.json" "metrics/train_$r.json"
    cp "runs/$r/config.resolved.toml" "metrics/train_$r.config.toml"
done
cp runs/ner_cluener_s3_soup/metrics.json metrics/train_ner_cluener_s3_soup.json   # what it averaged, its threshold
