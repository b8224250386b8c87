#!/usr/bin/env bash
# Similarity v3 (issue 15): the experiments behind the similarity research tables, one command per row, from the
# repository root. Every row is scored on the five dev sets (STS-B, LCQMC, BQ, ATEC, PAWS-X) and their mean.
#
#   research/sim_v3.sh objectives [DATA_ROOT]   # CoSENT mixture / NLI SimCSE / NLI -> pairs / one-stage mixtures
#   research/sim_v3.sh short [DATA_ROOT]        # the objectives again at an equal, short budget (STEPS_SHORT, 600 steps
#                                               # each, one thread; NLI -> pairs: half and half), all from ENCODER
#   research/sim_v3.sh pooling [DATA_ROOT]      # cls and mean against the recipes' first-last-avg (the sim_v3 row)
#   research/sim_v3.sh stage3 [DATA_ROOT]       # the one-stage mixture (sim_v3) again on encoder stage 3 (ENCODER_S3,
#                                               # default runs/encoder_v3_s3)
#   research/sim_v3.sh stage4 [DATA_ROOT]       # the same on stage 4 (ENCODER_S4, default runs/encoder_v3_s4; the
#                                               # committed encoders/roformer-zh-v3 holds the same weights)
#   research/sim_v3.sh stage5 [DATA_ROOT]       # the same on stage 5 (ENCODER_S5, default runs/encoder_v3_s5)
#   research/sim_v3.sh soup5 [DATA_ROOT]        # stage 5's run and a second seed of it side by side (one thread
#                                               # each), then their weight average (ropenlp train average)
#   research/sim_v3.sh epoch5 [DATA_ROOT]       # the stage-5 row over a whole epoch (the recipe's epochs = 1.0,
#                                               # 4,738 steps) instead of 0.63; two threads
#   research/sim_v3.sh ibn5 [DATA_ROOT]         # the stage-5 row (0.63 epoch, two threads) + the in-batch softmax
#                                               # over every CoSENT batch's positive pairs (sim.contrastive_weight 1)
#                                               # (the shipped row: 140 min in fp32 on an AVX2-only CPU, with
#                                               # SIM_V3_ARGS="--training.precision fp32"; the row without the
#                                               # softmax took 46 min with bf16 on AVX-512)
#   research/sim_v3.sh ibnsoup5 [DATA_ROOT]     # ibn5 again with seed 1 (the same start, init_seed 42; two threads,
#                                               # after ibn5), then the weight average of the two (ropenlp train average)
#   research/sim_v3.sh rest5 [DATA_ROOT]        # after ibn5: its run continued over the rest of its epoch (the
#                                               # pairs after step 2,985, training.data_from; 1,753 steps, lr 4e-5)
#   research/sim_v3.sh e2_5 [DATA_ROOT]         # after rest5: its run into a second epoch (training.data_from its
#                                               # last checkpoint; 1,753 steps, lr 3e-5)
#   research/sim_v3.sh e3_5 [DATA_ROOT]         # after e2_5: its run on through epoch 2 (training.data_from its last
#                                               # checkpoint, epoch 1.370; 1,753 steps, lr 3e-5)
#   research/sim_v3.sh e4_5 [DATA_ROOT]         # after e3_5: its run on past epoch 2's end (training.data_from its
#                                               # last checkpoint, epoch 1.740; 1,753 steps, lr 3e-5)
#   research/sim_v3.sh pathavg5 [DATA_ROOT]     # after e2_5: the weight average of rest5's and e2_5's best weights
#                                               # (two points on one path; ropenlp train average)
#   research/sim_v3.sh short5 [DATA_ROOT]       # ibn5 against the stage-5 row at an equal short budget (STEPS_SHORT
#                                               # each, one thread each, side by side), from ENCODER
#   research/sim_v3.sh short5b [DATA_ROOT]      # after short5: its ibn row again with seed 1 (the seed noise) and
#                                               # with sim.contrastive_weight 3, the same budget, side by side
#   research/sim_v3.sh swap4 [DATA_ROOT]        # the stage-4 row with PAWS-style word-order negatives
#                                               # (sim.swap_negatives 0.5), at its number of steps (2,985)
#   research/sim_v3.sh whitening [DATA_ROOT]    # the whitening table of the best run; stores the choice (or none)
#   research/sim_v3.sh collect [DATA_ROOT]      # full dev evaluations -> metrics/research/sim_v3_*.json
#   research/sim_v3.sh all [DATA_ROOT]          # all but short, short5, short5b and epoch5, in order
#
# ENCODER (default encoders/roformer-zh-v3) is the encoder every row starts from; RUN_WHITENING (default: the run
# with the best mean dev Spearman in metrics/research/) the run whose whitening is measured. Runs resume (--resume)
# and are skipped once finished; two threads each, one after the other. research/summarise.py prints the tables.
# SIM_V3_ARGS: overrides added to every training run (a smoke run: SIM_V3_ARGS="--training.max_steps 20").
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT="${1:?objectives, short, pooling, whitening, collect or all}"
DATA="${2:-../shared/data}"
RUN="${RUN:-.venv/bin/ropenlp}"
PY="${PY:-.venv/bin/python}"
ENCODER="${ENCODER:-encoders/roformer-zh-v3}"
read -r -a EXTRA <<< "${SIM_V3_ARGS:-}"
OUT=metrics/research
DEV=(stsb_zh/dev.tsv lcqmc/dev.tsv bq/dev.tsv atec/dev.tsv pawsx/dev.tsv)
RUNS=(sim_v3 sim_v3_cosent sim_v3_nli sim_v3_cosent_pairs sim_v3_pairs sim_v3_cls sim_v3_mean
      sim_s_mix sim_s_cosent sim_s_pairs sim_s_nli sim_s_nli_pairs sim_v3_s3 sim_v3_s4 sim_v3_s4_swap
      sim_v3_s5 sim_v3_s5_seed1 sim_v3_s5_soup sim_v3_s5_e1 sim_v3_s5_ibn sim_v3_s5_ibn_seed1 sim_v3_s5_ibn_soup sim_v3_s5_ibn_rest sim_v3_s5_ibn_e2 sim_v3_s5_ibn_e3 sim_v3_s5_ibn_e4 sim_v3_s5_ibn_path sim_s5_mix sim_s5_ibn sim_s5_ibn_seed1 sim_s5_ibn3)
STEPS_SHORT="${STEPS_SHORT:-600}"

train() {  # train OUT_NAME RECIPE [overrides...]: once, resumable, log in runs/OUT_NAME/train.out
    local name=$1 recipe=$2; shift 2
    [ -f "runs/$name/model/ropenlp.json" ] && return 0
    mkdir -p "runs/$name"
    "$RUN" train sim "$recipe" --data.root "$DATA" --output.dir "runs/$name" --resume "$@" \
        ${EXTRA[@]+"${EXTRA[@]}"} >> "runs/$name/train.out" 2>&1
}

objectives() {
    # one stage, every set: pair sets by CoSENT, NLI sets by supervised SimCSE (the recipe as it is)
    train sim_v3 recipes/sim_v3.toml --model.init "$ENCODER"
    # one stage, every set by CoSENT (NLI labels entailment 2 > neutral 1 > contradiction 0)
    train sim_v3_cosent recipes/sim_v3.toml --model.init "$ENCODER" --sim.objective cosent
    # NLI by supervised SimCSE alone (stage 1 of the two-stage recipe)
    train sim_v3_nli recipes/sim_v3_nli.toml --model.init "$ENCODER"
    # the pair sets by CoSENT alone, from the encoder
    train sim_v3_cosent_pairs recipes/sim_v3_pairs.toml --model.init "$ENCODER"
    # NLI -> pairs: stage 2 from stage 1's best checkpoint (the recipe as it is)
    train sim_v3_pairs recipes/sim_v3_pairs.toml --model.init runs/sim_v3_nli/best
}

short() {  # equal budget: STEPS_SHORT steps of 64 pairs each (the two-stage row: half NLI, half pairs), one thread
    local n=$STEPS_SHORT h=$((STEPS_SHORT / 2))
    local at=(--training.threads 1 --training.eval_every $((n / 2)) --training.checkpoint_every $((n / 2)))
    train sim_s_mix recipes/sim_v3.toml --model.init "$ENCODER" --training.max_steps "$n" "${at[@]}"
    train sim_s_cosent recipes/sim_v3.toml --model.init "$ENCODER" --sim.objective cosent --training.max_steps "$n" "${at[@]}"
    train sim_s_pairs recipes/sim_v3_pairs.toml --model.init "$ENCODER" --training.max_steps "$n" "${at[@]}"
    at=(--training.threads 1 --training.eval_every "$h" --training.checkpoint_every "$h")
    train sim_s_nli recipes/sim_v3_nli.toml --model.init "$ENCODER" --training.max_steps "$h" "${at[@]}"
    train sim_s_nli_pairs recipes/sim_v3_pairs.toml --model.init runs/sim_s_nli/best --training.max_steps "$h" "${at[@]}"
}

stage() {  # stage N: the shipping recipe as recipes/default.sh runs it (0.63 epoch, one thread), on encoder stage N
    local enc_var=ENCODER_S$1; local enc=${!enc_var:-runs/encoder_v3_s$1}   # ENCODER_S3 / ENCODER_S4 / ENCODER_S5
    train "sim_v3_s$1" recipes/sim_v3.toml --model.init "$enc" --training.threads 1 --training.epochs 0.63
}

epoch5() {  # the stage-5 row with the recipe's whole epoch: the sampled dev mean still rose at 0.63 epoch
    local enc=${ENCODER_S5:-runs/encoder_v3_s5}
    train sim_v3_s5_e1 recipes/sim_v3.toml --model.init "$enc" --training.threads 2
}

ibn() {  # ibn NAME [overrides...]: the stage-5 row (0.63 epoch, two threads) + the in-batch softmax, weight 1:
    # CoSENT ranks the pairs of a batch by label; the softmax also asks each positive pair's sentence to be nearer
    # its partner than the other pairs' sentences (the SimCSE / RoFormer-Sim retrieval view)
    local enc=${ENCODER_S5:-runs/encoder_v3_s5} name=$1; shift
    train "$name" recipes/sim_v3.toml --model.init "$enc" --training.threads 2 --training.epochs 0.63 \
        --sim.contrastive_weight 1.0 "$@"
}

ibn5() { ibn sim_v3_s5_ibn; }

continued() {  # continued NAME FROM STEP LR: a fresh run from FROM's best weights whose data goes on where FROM's
    # checkpoint step-STEP stopped (training.data_from: the same seed's order, into the next epoch past an epoch's
    # end), 1,753 steps at peak lr LR, the ibn5 row's objective
    train "$1" recipes/sim_v3.toml --model.init "runs/$2/best" --training.threads 2 --sim.contrastive_weight 1.0 \
        --training.max_steps 1753 --training.lr "$4" --training.data_from "runs/$2/checkpoints/step-$3"
}

rest5() {  # ibn5 continued over the rest of its epoch (a second stage): the pairs after its step 2,985 (its last),
    # at 4e-5 (the lr a whole-epoch schedule would have there)
    ibn5
    continued sim_v3_s5_ibn_rest sim_v3_s5_ibn 00002985 4e-5
}

e2_5() {  # rest5's model into a second epoch (a third stage): rest5's last checkpoint is epoch 1.000; 0.37 of
    # epoch 2 at 3e-5 (a second look at the same pairs)
    rest5
    continued sim_v3_s5_ibn_e2 sim_v3_s5_ibn_rest 00001753 3e-5
}

e3_5() {  # e2_5's model on through epoch 2 (a fourth stage): e2_5's last checkpoint is epoch 1.370; the next
    # 0.37 of epoch 2 at the same peak lr, 3e-5
    e2_5
    continued sim_v3_s5_ibn_e3 sim_v3_s5_ibn_e2 00001753 3e-5
}

e4_5() {  # e3_5's model on (a fifth stage): e3_5's last checkpoint is epoch 1.740; on past epoch 2's end into
    # epoch 3's order, at the same peak lr, 3e-5
    e3_5
    continued sim_v3_s5_ibn_e4 sim_v3_s5_ibn_e3 00001753 3e-5
}

pathavg5() {  # the second and third stages' best weights averaged (one path, not two seeds): the path's
    # average against its end
    e2_5
    average sim_v3_s5_ibn_path sim_v3_s5_ibn_rest sim_v3_s5_ibn_e2
}

ibnsoup5() {  # a second seed of ibn5 (data order and dropout; the same start) and the soup of the two
    ibn5
    ibn sim_v3_s5_ibn_seed1 --training.seed 1 --training.init_seed 42
    average sim_v3_s5_ibn_soup sim_v3_s5_ibn sim_v3_s5_ibn_seed1
}

budget() {  # BUDGET: the overrides of a one-thread run of $1 steps, evaluated and checkpointed halfway and at the end
    BUDGET=(--training.threads 1 --training.max_steps "$1" --training.eval_every $(($1 / 2))
            --training.checkpoint_every $(($1 / 2)))
}

short5() {  # the shipping mixture with and without the in-batch softmax, STEPS_SHORT steps each, side by side
    local a b at
    budget "$STEPS_SHORT"; at=("${BUDGET[@]}")
    train sim_s5_mix recipes/sim_v3.toml --model.init "$ENCODER" "${at[@]}" & a=$!
    train sim_s5_ibn recipes/sim_v3.toml --model.init "$ENCODER" "${at[@]}" --sim.contrastive_weight 1.0 & b=$!
    wait "$a"; wait "$b"
}

short5b() {  # the in-batch softmax: a second seed (the same start, init_seed 42) and three times the weight
    local a b at
    budget "$STEPS_SHORT"; at=("${BUDGET[@]}")
    train sim_s5_ibn_seed1 recipes/sim_v3.toml --model.init "$ENCODER" "${at[@]}" --sim.contrastive_weight 1.0 \
        --training.seed 1 --training.init_seed 42 & a=$!
    train sim_s5_ibn3 recipes/sim_v3.toml --model.init "$ENCODER" "${at[@]}" --sim.contrastive_weight 3.0 & b=$!
    wait "$a"; wait "$b"
}

soup() {  # soup N: stage N's run (seed 42) and seed 1 from the same start (init_seed 42) side by side, then the mean
    local enc_var=ENCODER_S$1; local enc=${!enc_var:-runs/encoder_v3_s$1} a b
    stage "$1" & a=$!
    train "sim_v3_s$1_seed1" recipes/sim_v3.toml --model.init "$enc" --training.threads 1 --training.epochs 0.63 \
        --training.seed 1 --training.init_seed 42 & b=$!
    wait "$a"; wait "$b"
    average "sim_v3_s$1_soup" "sim_v3_s$1" "sim_v3_s$1_seed1"
}

average() {  # average OUT RUN...: the best weights of the RUNs averaged into runs/OUT/best (ropenlp train
    # average); no whitening and no threshold: nothing to calibrate on dev (collect scores it like the runs)
    local out=$1 r sources=(); shift
    for r in "$@"; do sources+=("runs/$r/best"); done
    [ -f "runs/$out/best/ropenlp.json" ] || "$RUN" train average "${sources[@]}" -o "runs/$out/best" --overwrite
}

swap4() {  # half of every CoSENT set's positive pairs also give (a, b with two nouns swapped) as a negative;
    # max_steps holds the schedule of the sim_v3_s4 row (its 0.63 epoch), whatever the extra pairs add to an epoch
    local enc=${ENCODER_S4:-runs/encoder_v3_s4}
    train sim_v3_s4_swap recipes/sim_v3.toml --model.init "$enc" --training.threads 1 --training.max_steps 2985 \
        --sim.swap_negatives 0.5
}

pooling() {  # first-last-avg is the sim_v3 row
    train sim_v3_cls recipes/sim_v3.toml --model.init "$ENCODER" --model.pooling cls
    train sim_v3_mean recipes/sim_v3.toml --model.init "$ENCODER" --model.pooling mean
}

dev_args() { local d; for d in "${DEV[@]}"; do printf -- '%s\n' --data "$DATA/$d"; done; }

collect() {
    mkdir -p "$OUT"
    local r
    mapfile -t data < <(dev_args)
    for r in "${RUNS[@]}"; do
        [ -f "runs/$r/best/ropenlp.json" ] || continue
        [ -f "$OUT/$r.json" ] && [ "$OUT/$r.json" -nt "runs/$r/best/ropenlp.json" ] && continue
        "$RUN" evaluate sim --model "runs/$r/best" "${data[@]}" --out "$OUT/$r.json" > /dev/null
        if [ -f "runs/$r/config.resolved.toml" ]; then  # a trained run (an average has only its best/)
            cp "runs/$r/config.resolved.toml" "$OUT/$r.config.toml"
            cp "runs/$r/metrics.json" "$OUT/$r.train.json"
        else
            cp "runs/$r/best/metrics.json" "$OUT/$r.train.json"
        fi
    done
    "$PY" research/summarise.py
}

best_run() {  # the run with the best mean Spearman of the collected full dev evaluations
    "$PY" - "$OUT" "${RUNS[@]}" <<'EOF'
import json, sys
from pathlib import Path
out, runs = Path(sys.argv[1]), sys.argv[2:]
scores = {r: json.loads((out / f"{r}.json").read_text())["spearman_mean"] for r in runs if (out / f"{r}.json").is_file()}
print(max(scores, key=scores.get) if scores else "")
EOF
}

whitening() {
    local run="${RUN_WHITENING:-$(best_run)}"
    [ -n "$run" ] || { echo "no collected run to measure whitening on: run 'collect' first" >&2; exit 2; }
    local own  # the run's own training files, as its resolved config lists them (an average: its first source's)
    own=$("$PY" - "runs/$run" "$DATA" <<'EOF'
import json, sys, tomllib
from pathlib import Path
run, data = Path(sys.argv[1]), sys.argv[2]
if not (run / "config.resolved.toml").is_file():  # ropenlp train average: best/metrics.json names its sources
    run = Path(next(iter(json.loads((run / "best" / "metrics.json").read_text())["averaged_from"]))).parent
cfg = tomllib.load(open(run / "config.resolved.toml", "rb"))
print(",".join(data + "/" + p for s in cfg["data"]["train"] for p in s["paths"]))
EOF
)
    local eval=() d
    for d in "${DEV[@]}"; do eval+=(--eval "$DATA/$d"); done
    # (a) the task's own training sentences (both columns of every training set), (b) a general mix of news
    # titles and corpus lines; at most 5,000 sentences per file or glob (seeded); k: the dimension, the JL
    # estimate 8.33 ln N (always added) and the values between; no whitening scored alongside. The best by the
    # mean of the five is stored in runs/${run}_whitened (no whitening file at all when none is best).
    "$RUN" train whitening --model "runs/$run/best" --out "runs/${run}_whitened" "${eval[@]}" \
        --fit "own=$own" \
        --fit "general=$DATA/thucnews_titles/titles.txt,$DATA/corpus_more/tnews_toutiao_titles.txt,$DATA/corpus_zh/*.txt,$DATA/corpus_more/zhwiki_extract_sf2324.txt,$DATA/corpus_more/fewclue_clue_texts.txt" \
        --k 32,64,128,192 --max-sentences 5000 --seed 0 --metrics "$OUT/${run}_whitening.json"
    "$PY" research/summarise.py
}

case "$WHAT" in
    objectives) objectives ;;
    short) short ;;
    pooling) pooling ;;
    whitening) whitening ;;
    collect) collect ;;
    stage3) stage 3 ;;
    stage4) stage 4 ;;
    stage5) stage 5 ;;
    soup5) soup 5 ;;
    epoch5) epoch5 ;;
    ibn5) ibn5 ;;
    ibnsoup5) ibnsoup5 ;;
    rest5) rest5 ;;
    e2_5) e2_5 ;;
    e3_5) e3_5 ;;
    e4_5) e4_5 ;;
    pathavg5) pathavg5 ;;
    short5) short5 ;;
    short5b) short5b ;;
    swap4) swap4 ;;
    all) objectives; stage 3; stage 4; stage 5; soup 5; swap4; pooling; ibnsoup5; e4_5; pathavg5; collect
         for r in sim_v3 sim_v3_s3 sim_v3_s4 sim_v3_s5 sim_v3_s5_ibn sim_v3_s5_ibn_rest sim_v3_s5_ibn_e2 \
                  sim_v3_s5_ibn_e3; do
             RUN_WHITENING=$r whitening; done
         whitening ;;  # then the best collected run (sim_v3_s5_ibn_e4)
    *) echo "unknown step $WHAT: objectives, short, pooling, stage3, stage4, stage5, soup5, epoch5, ibn5, ibnsoup5, rest5, e2_5, e3_5, e4_5, pathavg5, short5, short5b, swap4, whitening, collect or all" >&2
       exit 2 ;;
esac
