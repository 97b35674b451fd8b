#!/usr/bin/env bash
# The evaluation experiment of docs/EXPERIMENTS.md: does CIM pre-training beat training
# from scratch, on Fashion-MNIST at 32 px, on 2 CPU cores?
#
#   scripts/experiment-fmnist.sh            # the full run (about 2 hours on 2 cores)
#   scripts/experiment-fmnist.sh --quick    # the same table with fewer steps (about 15 minutes)
#   scripts/experiment-fmnist.sh --smoke    # a plumbing check of a few minutes; numbers meaningless
#
# Options: --out DIR (default runs/experiment-fmnist[-quick|-smoke]), --data DIR (default
# /usr/share/datasets/fashion-mnist), --seeds "0 1 2" (fine-tuning and probe seeds; the
# table shows the median; default one seed), --ft-lrs "5e-4 1e-3 2e-3" (fine-tune every
# encoder at each learning rate instead of the fixed ones below; reported on the test
# split, so a sensitivity check rather than a tuned choice). CIM=path/to/cim uses that
# binary instead of building one.
#
# What runs (all through the `cim` binary; the numbers are in the variables below):
#   1. a dVAE tokenizer (`cim tokenizer train`), shared by every pre-training run;
#   2. CIM pre-training (`cim pretrain`) of
#      - the tiny ViT of the tiny-respix / tiny-revdet presets (width 192, depth 4, 3 heads,
#        patch 4 at 32 px; the reference used depth 12), RESPIX and REVDET;
#      - a narrow ResNet-18 (basic blocks 2-2-2-2, stem width 16, 3x3 stride-1 stem; config
#        file below), RESPIX and REVDET, its generator a 2-block ViT of width 192;
#      - the cheap ablations on the ViT with RESPIX: non-overlapping and no target
#        normalization (Table 6), argmax and uniform sampling (Table 7);
#   3. linear probes (`cim eval linear-probe`, mean of the patch tokens for the ViT) of
#      every encoder and of the random initializations, and of raw pixels;
#   4. fine-tuning (`cim eval finetune`) of the ViT and the ResNet from random init,
#      CIM-RESPIX and CIM-REVDET at the same budget.
# Everything lands in OUT (runs, logs, JSON results); OUT/results.md holds the tables for
# docs/EXPERIMENTS.md. A step whose result already exists is skipped, so an interrupted
# experiment continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=full
OUT=""
DATA=/usr/share/datasets/fashion-mnist
SEEDS="0"
FT_LRS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --smoke) MODE=smoke ;;
    --out) OUT="$2"; shift ;;
    --data) DATA="$2"; shift ;;
    --seeds) SEEDS="$2"; shift ;;
    --ft-lrs) FT_LRS="$2"; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# ---- budgets ---------------------------------------------------------------------------
# TOK_STEPS: tokenizer steps (batch 64); PT_STEPS: pre-training steps (batch 32), the same
# for every encoder and ablation; PROBE_TRAIN / PROBE_TEST: images the probe uses (a seeded
# sample; 0: all); FT_STEPS / FT_BATCH: fine-tuning budget, the same for every init;
# FT_TEST: test images of fine-tuning (0: all 10,000).
case "$MODE" in
  full)  TOK_STEPS=350; PT_STEPS=500; PROBE_TRAIN=15000; PROBE_TEST=0;    FT_STEPS=500; FT_BATCH=64; FT_TEST=0 ;;
  quick) TOK_STEPS=100; PT_STEPS=80;  PROBE_TRAIN=2000;  PROBE_TEST=1000; FT_STEPS=80;  FT_BATCH=64; FT_TEST=1000 ;;
  smoke) TOK_STEPS=4;   PT_STEPS=4;   PROBE_TRAIN=200;   PROBE_TEST=100;  FT_STEPS=4;   FT_BATCH=16; FT_TEST=100 ;;
esac
[ -n "$OUT" ] || OUT="runs/experiment-fmnist$([ "$MODE" = full ] || echo "-$MODE")"
# Fixed fine-tuning learning rates: 1e-3 for the ViT (the reference's from-scratch ViT
# trained at 1e-3 and stalled at 2e-3), 2e-3 for the ResNet; AdamW, 5% warm-up, cosine,
# label smoothing 0.1, light random resized crop (0.8-1) and flips. Layer-wise decay 0.8
# for a pre-trained ViT (Table 14), none from scratch (it only slows the lower layers of
# a network with nothing to preserve) and none for the ResNet (Table 15, whose weight
# decay 0.02 the ResNet uses too).
VIT_LR=1e-3
RESNET_LR=2e-3
VIT_ARCH="vit(img=32,patch=4,dim=192,depth=4,heads=3)"
# The narrow ResNet as the pre-training config names it, and as an architecture at 32 px.
RESNET_ENHANCER="resnet(block=basic,layers=2-2-2-2,width=16,stem=small)"
RESNET_ARCH="resnet(block=basic,layers=2-2-2-2,width=16,stem=small,img=32)"

if [ ! -d "$DATA" ]; then
  echo "error: $DATA does not exist (apt-get install dataset-fashion-mnist, or --data DIR)" >&2
  exit 1
fi
if [ -z "${CIM:-}" ]; then
  cargo build --release -p cim-cpu --bin cim
  CIM=target/release/cim
fi
mkdir -p "$OUT"/{configs,logs,probe,pretrain,finetune}
LOG="$OUT/logs"
echo "experiment ($MODE) in $OUT with $CIM; $(nproc) cores"

# ---- configurations --------------------------------------------------------------------
# Overlays on the tiny presets (see core/src/train/presets.rs): no sample pictures, a
# checkpoint at the end only.
cat > "$OUT/configs/common.toml" <<'EOF'
sample_every = 0
checkpoint_every = 100000
log_every = 50
EOF
cat > "$OUT/configs/resnet.toml" <<EOF
sample_every = 0
checkpoint_every = 100000
log_every = 50

[enhancer]
arch = "$RESNET_ENHANCER"
patch_size = 4
generator_width = 192
generator_heads = 3
EOF
ablation() { # name, TOML lines
  { cat "$OUT/configs/common.toml"; printf '%s\n' "$2"; } > "$OUT/configs/$1.toml"
}
ablation respix-patch $'respix_norm = "patch"\nrespix_k = 8'
ablation respix-none 'respix_norm = "none"'
ablation sampling-argmax 'sampling = "argmax"'
ablation sampling-uniform 'sampling = "uniform"'

# ---- helpers ---------------------------------------------------------------------------
# A top-level number of a JSON file written by cim (two-space indented).
json_num() { sed -n "s/^  \"$2\": \([^,]*\),\{0,1\}$/\1/p" "$1" | head -n 1; }
pct() { [ -n "$1" ] && awk -v x="$1" 'BEGIN { printf "%.1f", 100 * x }' || echo "–"; }
mins() { [ -n "$1" ] && awk -v s="$1" 'BEGIN { if (s < 90) printf "%.0f s", s; else printf "%.1f min", s / 60 }' || echo "–"; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
run_logged() { # log file, command...
  local log="$1"; shift
  echo "+ $*" > "$log"
  if ! "$@" >> "$log" 2>&1; then
    echo "error: $* failed; see $log:" >&2
    tail -n 5 "$log" >&2
    exit 1
  fi
}

TOK="$OUT/pretrain/tokenizer.safetensors"
if [ ! -f "$TOK" ]; then
  echo "tokenizer: $TOK_STEPS steps"
  run_logged "$LOG/tokenizer.log" "$CIM" tokenizer train --data "$DATA" --out "$TOK" --steps "$TOK_STEPS" --quiet
fi

# pretrain NAME PRESET CONFIG
pretrain() {
  local run="$OUT/pretrain/$1"
  if [ ! -f "$run/enhancer.safetensors" ]; then
    echo "pre-training $1 ($2, $PT_STEPS steps)"
    local t0=$SECONDS
    run_logged "$LOG/pretrain-$1.log" "$CIM" pretrain --preset "$2" --config "$OUT/configs/$3.toml" \
      --data "$DATA" --run "$run" --steps "$PT_STEPS" --tokenizer "$TOK" --quiet
    echo $((SECONDS - t0)) > "$run/seconds"
  fi
}
pretrain vit-respix tiny-respix common
pretrain vit-revdet tiny-revdet common
pretrain resnet-respix tiny-respix resnet
pretrain resnet-revdet tiny-revdet resnet
pretrain vit-respix-patch tiny-respix respix-patch
pretrain vit-respix-none tiny-respix respix-none
pretrain vit-sampling-argmax tiny-respix sampling-argmax
pretrain vit-sampling-uniform tiny-respix sampling-uniform

# probe NAME SEED ARGS...: OUT/probe/NAME-sSEED.json
probe() {
  local name="$1" seed="$2"; shift 2
  local json="$OUT/probe/$name-s$seed.json"
  if [ ! -f "$json" ]; then
    echo "linear probe: $name (seed $seed)"
    run_logged "$LOG/probe-$name-s$seed.log" "$CIM" eval linear-probe --data "$DATA" --train-limit "$PROBE_TRAIN" \
      --test-limit "$PROBE_TEST" --seed "$seed" --json "$json" --quiet "$@"
  fi
}
# finetune NAME SEED LR ARGS...: OUT/finetune/NAME-lrLR-sSEED/result.json
finetune() {
  local name="$1" seed="$2" lr="$3"; shift 3
  local run="$OUT/finetune/$name-lr$lr-s$seed"
  if [ ! -f "$run/result.json" ]; then
    echo "fine-tuning: $name at lr $lr (seed $seed, $FT_STEPS steps of $FT_BATCH)"
    rm -rf "$run"
    run_logged "$LOG/finetune-$name-lr$lr-s$seed.log" "$CIM" eval finetune --data "$DATA" --run "$run" \
      --steps "$FT_STEPS" --batch "$FT_BATCH" --lr "$lr" --test-limit "$FT_TEST" --seed "$seed" --log-every 50 \
      --checkpoint-every 100000 --quiet "$@"
  fi
}

P="$OUT/pretrain"
for s in $SEEDS; do
  probe pixels "$s" --pixels --image-size 32
  probe vit-random "$s" --arch "$VIT_ARCH"
  probe resnet-random "$s" --arch "$RESNET_ARCH"
  for r in vit-respix vit-revdet resnet-respix resnet-revdet vit-respix-patch vit-respix-none \
    vit-sampling-argmax vit-sampling-uniform; do
    probe "$r" "$s" --checkpoint "$P/$r"
  done
  for lr in ${FT_LRS:-$VIT_LR}; do
    finetune vit-random "$s" "$lr" --checkpoint "$P/vit-respix" --from-scratch --layer-decay 1
    finetune vit-respix "$s" "$lr" --checkpoint "$P/vit-respix"
    finetune vit-revdet "$s" "$lr" --checkpoint "$P/vit-revdet"
  done
  for lr in ${FT_LRS:-$RESNET_LR}; do
    finetune resnet-random "$s" "$lr" --checkpoint "$P/resnet-respix" --from-scratch --weight-decay 0.02
    finetune resnet-respix "$s" "$lr" --checkpoint "$P/resnet-respix" --weight-decay 0.02
    finetune resnet-revdet "$s" "$lr" --checkpoint "$P/resnet-revdet" --weight-decay 0.02
  done
done

# ---- the tables ------------------------------------------------------------------------
probe_top1() { # name: median over the seeds
  local v=""
  for s in $SEEDS; do v="$v $(json_num "$OUT/probe/$1-s$s.json" test_top1)"; done
  pct "$(echo "$v" | median)"
}
ft_field() { # name lr field: median over the seeds
  local v=""
  for s in $SEEDS; do v="$v $(json_num "$OUT/finetune/$1-lr$2-s$s/result.json" "$3")"; done
  echo "$v" | median
}
pt_time() { [ -f "$P/$1/seconds" ] && mins "$(cat "$P/$1/seconds")" || echo "–"; }
nseeds=$(echo $SEEDS | wc -w)
seeds_note=$([ "$nseeds" -gt 1 ] && echo "median of $nseeds seeds ($SEEDS)" || echo "one seed ($SEEDS)")
{
  echo "## Results ($MODE run, $(date -u +%Y-%m-%d))"
  echo
  echo "Machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)," \
    "$(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo 2>/dev/null) memory;" \
    "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')."
  echo "Budgets: tokenizer $TOK_STEPS steps; pre-training $PT_STEPS steps of 32 images; linear probe on" \
    "$([ "$PROBE_TRAIN" = 0 ] && echo all || echo "$PROBE_TRAIN") training and" \
    "$([ "$PROBE_TEST" = 0 ] && echo all 10000 || echo "$PROBE_TEST") test images; fine-tuning $FT_STEPS steps of" \
    "$FT_BATCH images, tested on $([ "$FT_TEST" = 0 ] && echo all 10000 || echo "$FT_TEST") images; $seeds_note."
  echo
  echo "| encoder | init | pre-training | linear probe top-1 (%) | fine-tune lr | fine-tune top-1 (%) | fine-tuning time |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  row() { # label init probe-name pretrain-run ft-name lrs
    local lr
    for lr in $6; do
      echo "| $1 | $2 | $([ -n "$4" ] && pt_time "$4" || echo "–") | $(probe_top1 "$3") | $lr |" \
        "$(pct "$(ft_field "$5" "$lr" test_top1)") | $(mins "$(ft_field "$5" "$lr" train_seconds)") |"
    done
  }
  row "ViT (tiny preset, depth 4)" "random" vit-random "" vit-random "${FT_LRS:-$VIT_LR}"
  row "ViT (tiny preset, depth 4)" "CIM-RESPIX" vit-respix vit-respix vit-respix "${FT_LRS:-$VIT_LR}"
  row "ViT (tiny preset, depth 4)" "CIM-REVDET" vit-revdet vit-revdet vit-revdet "${FT_LRS:-$VIT_LR}"
  row "ResNet-18, width 16" "random" resnet-random "" resnet-random "${FT_LRS:-$RESNET_LR}"
  row "ResNet-18, width 16" "CIM-RESPIX" resnet-respix resnet-respix resnet-respix "${FT_LRS:-$RESNET_LR}"
  row "ResNet-18, width 16" "CIM-REVDET" resnet-revdet resnet-revdet resnet-revdet "${FT_LRS:-$RESNET_LR}"
  echo "| raw pixels (32×32, grey) | – | – | $(probe_top1 pixels) | – | – | – |"
  echo
  echo "Ablations (ViT, CIM-RESPIX, $PT_STEPS pre-training steps each; linear probe top-1 %):"
  echo
  echo "| RESPIX target normalization (Table 6) | sliding window 8×8 | non-overlapping 8×8 | none |"
  echo "| --- | --- | --- | --- |"
  echo "| linear probe top-1 (%) | $(probe_top1 vit-respix) | $(probe_top1 vit-respix-patch) | $(probe_top1 vit-respix-none) |"
  echo "| pre-training time | $(pt_time vit-respix) | $(pt_time vit-respix-patch) | $(pt_time vit-respix-none) |"
  echo
  echo "| generator sampling (Table 7) | softmax (T = 1) | argmax | uniform |"
  echo "| --- | --- | --- | --- |"
  echo "| linear probe top-1 (%) | $(probe_top1 vit-respix) | $(probe_top1 vit-sampling-argmax) | $(probe_top1 vit-sampling-uniform) |"
} > "$OUT/results.md"
cat "$OUT/results.md"
echo "wrote $OUT/results.md"
