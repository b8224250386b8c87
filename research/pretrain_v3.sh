#!/usr/bin/env bash
# Encoder v3 (issue 14): the experiments behind docs "Encoder v3" tables, one command each, from the repository root.
#
#   research/pretrain_v3.sh speed [DATA_ROOT]       # tokens/s of each objective and training option (40 steps each)
#   research/pretrain_v3.sh objectives [DATA_ROOT]  # MLM vs whole-word MLM vs ELECTRA at equal CPU time, then
#                                                   # the same short CLUENER fine-tune of each
#   research/pretrain_v3.sh ner [DATA_ROOT]         # NER on the committed encoder: the shipping CLUENER recipe,
#                                                   # with an intermediate NER stage (ner_more), + FGM; CMeEE
#   research/pretrain_v3.sh ner3 [DATA_ROOT]        # the same on encoder stage 3: intermediate -> CLUENER + FGM,
#                                                   # CMeEE + FGM (ENCODER_S3, default runs/encoder_v3_s3)
#   research/pretrain_v3.sh ner4 [DATA_ROOT]        # the same on encoder stage 4 (ENCODER_S4, default
#                                                   # runs/encoder_v3_s4 as recipes/default.sh writes it; the
#                                                   # committed encoders/roformer-zh-v3 holds the same weights)
#   research/pretrain_v3.sh soup3 [DATA_ROOT]       # two more seeds of the stage-3 CLUENER run from the same start
#                                                   # (training.init_seed 42, the first run's), side by side, then
#                                                   # the average of the three (ropenlp train average)
#   research/pretrain_v3.sh soup4 [DATA_ROOT]       # the same for the stage-4 run
#   research/pretrain_v3.sh stages [DATA_ROOT]      # the same 5-epoch CLUENER fine-tune on stage 2 and stage 3
#                                                   # (ENCODER_S2 / ENCODER_S3: released folders of each)
#   research/pretrain_v3.sh collect [DATA_ROOT]     # evaluations + metrics/research/ JSON of whatever ran
#
# One thread per run (two run side by side on 2 cores). All runs share one vocabulary, built once from the
# training texts (runs/pretrain_vocab.txt) and one cache of packed sequences (runs/cache). JSON goes to
# metrics/research/; research/summarise.py prints the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT="${1:?speed or objectives}"
DATA="${2:-../shared/data}"
RUN="${RUN:-.venv/bin/ropenlp}"
VOCAB=runs/pretrain_vocab.txt
# equal CPU time: 30 minutes at one thread, in steps of batch 64 x 128 tokens, from the speed runs' medians
STEPS_MLM="${STEPS_MLM:-1300}"; STEPS_WWM="${STEPS_WWM:-1300}"; STEPS_ELECTRA="${STEPS_ELECTRA:-690}"

pretrain() { local out=$1; shift; mkdir -p "$out"; "$RUN" train mlm recipes/pretrain_v3.toml --data.root "$DATA" \
             --vocab.path "$VOCAB" --output.dir "$out" --resume "$@" >> "$out/train.out" 2>&1; }
ner() { local out=$1; shift; mkdir -p "$out"; "$RUN" train ner "$@" --data.root "$DATA" --output.dir "$out" \
        --resume >> "$out/train.out" 2>&1; }
finetune() { local out=$1 init=$2; mkdir -p "$out"; "$RUN" train ner recipes/ner_cluener.toml --data.root "$DATA" \
             --model.init "$init" --training.epochs 5 --training.patience 3 --training.threads 1 --output.dir "$out" \
             --resume >> "$out/train.out" 2>&1; }

if [ ! -f "$VOCAB" ]; then   # the vocabulary of the v3 texts: 8,000 pieces, min count 5 (a 1-step run builds it)
    pretrain runs/pt_vocab --training.max_steps 1 --training.eval_every 0
    cp runs/pt_vocab/vocab.txt "$VOCAB"
fi
SPEED=(--training.max_steps 40 --training.eval_every 0 --training.checkpoint_every 0 --training.warmup_steps 5
       --training.warmup_ratio 0)
MLM=(--mlm.objective mlm --mlm.replace_mask 0.8 --mlm.replace_random 0.1)
ELECTRA=(--mlm.objective electra --mlm.replace_mask 1.0 --mlm.replace_random 0.0)
case "$WHAT" in
speed)
    pretrain runs/spd_mlm "${SPEED[@]}" "${MLM[@]}"
    pretrain runs/spd_wwm "${SPEED[@]}" "${MLM[@]}" --mlm.whole_word true
    pretrain runs/spd_electra "${SPEED[@]}" "${ELECTRA[@]}"
    pretrain runs/spd_mlm_fp32 "${SPEED[@]}" "${MLM[@]}" --training.precision fp32
    pretrain runs/spd_mlm_noprefetch "${SPEED[@]}" "${MLM[@]}" --data.prefetch 0
    pretrain runs/spd_mlm_unpacked "${SPEED[@]}" "${MLM[@]}" --data.pack none
    pretrain runs/spd_mlm_6x384 "${SPEED[@]}" "${MLM[@]}" --model.encoder.hidden_size 384 \
        --model.encoder.num_hidden_layers 6 --model.encoder.num_attention_heads 6 --model.encoder.intermediate_size 1536
    pretrain runs/spd_electra_6x384 "${SPEED[@]}" "${ELECTRA[@]}" --model.encoder.hidden_size 384 --model.encoder.num_hidden_layers 6 \
        --model.encoder.num_attention_heads 6 --model.encoder.intermediate_size 1536 --electra.generator_hidden 192 \
        --electra.generator_heads 3 --electra.generator_intermediate 768
    ;;
objectives)
    pretrain runs/obj_mlm --training.max_steps "$STEPS_MLM" "${MLM[@]}"
    pretrain runs/obj_wwm --training.max_steps "$STEPS_WWM" "${MLM[@]}" --mlm.whole_word true
    pretrain runs/obj_electra --training.max_steps "$STEPS_ELECTRA" "${ELECTRA[@]}"
    for r in obj_mlm obj_wwm obj_electra; do finetune "runs/ner_$r" "runs/$r/model"; done
    ;;
stages)
    finetune runs/ner_s2_e5 "${ENCODER_S2:-runs/encoder_v3_s2}"
    finetune runs/ner_s3_e5 "${ENCODER_S3:-encoders/roformer-zh-v3}"
    ;;
ner)
    # each a full shipping-recipe fine-tune from encoders/roformer-zh-v3 (one thread); the CLUENER baseline is
    # recipes/ner_cluener.toml as it is (runs/ner_cluener_v3)
    ner runs/ner_cluener_v3 recipes/ner_cluener.toml
    ner runs/ner_intermediate recipes/ner_intermediate.toml           # MSRA + Resume, 4 epochs
    ner runs/ner_cluener_inter recipes/ner_cluener.toml --model.init runs/ner_intermediate/best
    ner runs/ner_cluener_inter_fgm recipes/ner_cluener.toml --model.init runs/ner_intermediate/best \
        --training.adversarial 0.5
    ner runs/ner_cmeee_v3 recipes/ner_cmeee.toml
    ;;
ner3|ner4)
    # the same recipes on encoder stage 3 or 4 (the rows above used stage 2): intermediate stage -> CLUENER + FGM,
    # and CMeEE + FGM; one thread each, as recipes/default.sh runs them (there side by side)
    s=${WHAT#ner}; enc_var=ENCODER_S$s; enc=${!enc_var:-runs/encoder_v3_s$s}   # ENCODER_S3 / ENCODER_S4
    ner "runs/ner_intermediate_s$s" recipes/ner_intermediate.toml --model.init "$enc" --training.threads 1
    ner "runs/ner_cluener_s${s}_inter_fgm" recipes/ner_cluener.toml --model.init "runs/ner_intermediate_s$s/best" \
        --training.adversarial 0.5 --training.threads 1
    ner "runs/ner_cmeee_s${s}_fgm" recipes/ner_cmeee.toml --model.init "$enc" --training.adversarial 0.5 --training.threads 1
    # stage 4 peaked at epoch 6 of 12 (stage 3 at 8): the same with the learning rate decayed over 8 epochs
    if [ "$s" = 4 ]; then
        ner runs/ner_cluener_s4_inter_fgm_e8 recipes/ner_cluener.toml --model.init runs/ner_intermediate_s4/best \
            --training.adversarial 0.5 --training.threads 1 --training.epochs 8
    fi
    ;;
soup3|soup4)
    # seeds 1 and 2 draw the data order and dropout; init_seed 42 gives them the head the seed-42 run started from
    # (a run without init_seed draws its head from its seed), so the three start from the same weights
    s=${WHAT#soup}
    for seed in 1 2; do
        ner "runs/ner_cluener_s${s}_inter_fgm_seed$seed" recipes/ner_cluener.toml \
            --model.init "runs/ner_intermediate_s$s/best" --training.adversarial 0.5 --training.threads 1 \
            --training.seed "$seed" --training.init_seed 42 &
    done
    wait
    "$RUN" train average "runs/ner_cluener_s${s}_inter_fgm/best" "runs/ner_cluener_s${s}_inter_fgm_seed1/best" \
        "runs/ner_cluener_s${s}_inter_fgm_seed2/best" -o "runs/ner_cluener_s${s}_soup" --dev "$DATA/cluener/dev.json" \
        --overwrite --threshold-grid=-2,-1.5,-1,-0.5,-0.25,0,0.25,0.5,1
    ;;
collect)
    mkdir -p metrics/research
    for r in spd_mlm spd_wwm spd_electra spd_mlm_fp32 spd_mlm_noprefetch spd_mlm_unpacked spd_mlm_6x384 spd_electra_6x384 \
             obj_mlm obj_wwm obj_electra; do
        [ -f "runs/$r/metrics.json" ] || continue
        cp "runs/$r/metrics.json" "metrics/research/$r.train.json"
        cp "runs/$r/config.resolved.toml" "metrics/research/$r.config.toml"
        # tokens/s: the median over the steps after the first 5 (warm-up of the allocator and the prefetch queue);
        # seconds: the run's total step time (one thread)
        "${PY:-.venv/bin/python}" - "runs/$r/log.jsonl" "metrics/research/$r.speed.json" <<'PYEOF'
import json, statistics, sys
steps = [json.loads(x) for x in open(sys.argv[1], encoding="utf-8") if x.strip()]
steps = [s for s in steps if "tokens_per_s" in s]
late = [s for s in steps if s["step"] > 5] or steps
json.dump({"steps": len(steps), "median_tokens_per_s": round(statistics.median(s["tokens_per_s"] for s in late)),
           "median_step_s": round(statistics.median(s["seconds"] for s in late), 3),
           "step_seconds_total": round(sum(s["seconds"] for s in steps), 1)}, open(sys.argv[2], "w"), indent=2)
PYEOF
    done
    grid=(--threshold-grid=-2,-1.5,-1,-0.5,-0.25,0,0.25,0.5,1)
    for r in ner_obj_mlm ner_obj_wwm ner_obj_electra ner_s2_e5 ner_s3_e5; do
        [ -f "runs/$r/metrics.json" ] || continue   # finished runs only
        cp "runs/$r/metrics.json" "metrics/research/$r.train.json"
        cp "runs/$r/config.resolved.toml" "metrics/research/$r.config.toml"
        [ -f "metrics/research/${r}_flat.json" ] || "$RUN" evaluate ner --model "runs/$r/best" \
            --data "$DATA/cluener/dev.json" --decode flat "${grid[@]}" --threads 1 --out "metrics/research/${r}_flat.json"
    done
    for r in ner_cluener_v3 ner_cluener_inter ner_cluener_inter_fgm ner_intermediate ner_cmeee_v3 \
             ner_intermediate_s3 ner_cluener_s3_inter_fgm ner_cmeee_s3_fgm \
             ner_intermediate_s4 ner_cluener_s4_inter_fgm ner_cluener_s4_inter_fgm_e8 ner_cmeee_s4_fgm \
             ner_cluener_s3_inter_fgm_seed1 ner_cluener_s3_inter_fgm_seed2 ner_cluener_s3_soup \
             ner_cluener_s4_inter_fgm_seed1 ner_cluener_s4_inter_fgm_seed2 ner_cluener_s4_soup; do
        [ -f "runs/$r/metrics.json" ] || continue   # finished runs only
        if [ -f "runs/$r/config.resolved.toml" ]; then
            cp "runs/$r/metrics.json" "metrics/research/$r.train.json"
            cp "runs/$r/config.resolved.toml" "metrics/research/$r.config.toml"
            model="runs/$r/best"
        else   # an average (ropenlp train average): its record, and the checkpoint itself
            cp "runs/$r/metrics.json" "metrics/research/$r.average.json"
            model="runs/$r"
        fi
        case "$r" in
        ner_intermediate*) continue ;;
        ner_cmeee_*) out="metrics/research/${r}_nested.json"
            what=(--data "$DATA/cmeee/dev.jsonl" --decode nested --threshold-grid=-1,-0.5,-0.25,0,0.25,0.5,1) ;;
        *) out="metrics/research/${r}_flat.json"; what=(--data "$DATA/cluener/dev.json" --decode flat "${grid[@]}") ;;
        esac
        [ "$out" -nt "runs/$r/metrics.json" ] && continue   # evaluated since the run finished
        "$RUN" evaluate ner --model "$model" "${what[@]}" --threads 1 --out "$out"
    done
    ;;
*) echo "unknown: $WHAT (speed, objectives, stages, ner, ner3, ner4, soup3, soup4, collect)" >&2; exit 2 ;;
esac
