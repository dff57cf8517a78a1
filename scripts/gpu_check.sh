#!/usr/bin/env bash
# The GPU path in one call (under 8 minutes on one modern GPU): on a machine with a CUDA
# GPU and audiolab installed (`make install`), from the repository root:
#
#     bash scripts/gpu_check.sh [OUT_DIR]
#
# 1. a few bf16-mixed training steps per task (pitch; separation on musdb_synth; the VAE
#    where FSDD is found: $FSDD_ROOT, data/fsdd or ../shared/data/fsdd);
# 2. trainer=ddp over every GPU present (pitch, a few steps);
# 3. separate.py on 60 s of audio on the GPU, with the checkpoint of step 1;
# 4. eval.py of that checkpoint with the fast BSSEval (+callbacks=museval,
#    test_backend=fast), and audiolab's BSSEval v4 on CUDA against the CPU on one 60-s
#    4-target track: largest |difference| per metric and seconds on each.
# Then one summary table. Every step runs even when one before it failed; the script exits
# 1 when any failed. Logs: OUT_DIR (default outputs/gpu_check/<time>).
# GPU_CHECK_ON_CPU=1 runs the same steps on the CPU (trainer=cpu, ddp_sim, device=cpu):
# a dry run of this script itself on a machine without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$OUT"
if [ "${GPU_CHECK_ON_CPU:-0}" = 1 ]; then
    TRAINER=cpu; DDP=ddp_sim; DEVICE=cpu; ACCEL=cpu; GPUS=2
elif "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    TRAINER=gpu; DDP=ddp; DEVICE=cuda; ACCEL=gpu
    GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
else
    echo "error: no CUDA GPU is visible to torch ($PY); run this on a GPU machine (GPU_CHECK_ON_CPU=1: a dry run)" >&2
    exit 1
fi
export GPU_CHECK_DEVICE=$DEVICE
COMMON=(logger=csv callbacks.rich_progress_bar=null extras.print_config=false "paths.log_dir=$OUT/runs")
STEPS=(trainer.max_epochs=1 trainer.max_steps=8 trainer.limit_train_batches=8 trainer.limit_val_batches=2 trainer.limit_test_batches=2 trainer.num_sanity_val_steps=0)
ROWS=()
FAILED=0

step() {  # step NAME -- command...: runs it, logs to OUT/NAME.log, adds a row
    local name=$1; shift 2
    local start=$SECONDS
    if "$@" >"$OUT/$name.log" 2>&1; then
        ROWS+=("$name|ok|$((SECONDS - start))|$(tail -n 1 "$OUT/$name.log" | cut -c1-90)")
    else
        FAILED=1
        ROWS+=("$name|FAILED|$((SECONDS - start))|see $OUT/$name.log: $(grep -m1 -E '^error:|Error' "$OUT/$name.log" | cut -c1-80)")
    fi
}

step pitch_bf16 -- "$PY" src/train.py trainer=$TRAINER trainer.precision=bf16-mixed "${STEPS[@]}" \
    data.train_batches_per_epoch=8 data.val_clips=4 data.test_clips=4 "${COMMON[@]}" task_name=gpu_pitch
step separation_bf16 -- "$PY" src/train.py data=musdb_synth model=tfc_tdf trainer=$TRAINER trainer.precision=bf16-mixed \
    "${STEPS[@]}" data.batch_size=4 "${COMMON[@]}" task_name=gpu_separation
FSDD=${FSDD_ROOT:-}
for candidate in data/fsdd ../shared/data/fsdd; do
    [ -z "$FSDD" ] && [ -d "$candidate" ] && FSDD=$candidate
done
if [ -n "$FSDD" ]; then
    step vae_bf16 -- env FSDD_ROOT="$FSDD" "$PY" src/train.py data=fsdd model=vae callbacks=vae trainer=$TRAINER \
        trainer.precision=bf16-mixed "${STEPS[@]}" "${COMMON[@]}" task_name=gpu_vae
else
    ROWS+=("vae_bf16|skipped|0|no FSDD found (set FSDD_ROOT)")
fi
step ddp_${GPUS}dev -- "$PY" src/train.py trainer=$DDP "trainer.devices=$GPUS" "${STEPS[@]}" \
    data.train_batches_per_epoch=8 data.val_clips=4 data.test_clips=4 "${COMMON[@]}" task_name=gpu_ddp

SEP_CKPT=$(ls -t "$OUT"/runs/gpu_separation/*/checkpoints/last.ckpt 2>/dev/null | head -n 1)
if [ -n "$SEP_CKPT" ]; then
    step make_60s_wav -- "$PY" -c "
import numpy as np, soundfile as sf
from audiolab.data.synth_musdb import render_track
stems = render_track(seed=7, duration=60.0)
sf.write('$OUT/mix60.wav', sum(stems.values()).T.astype(np.float32), 44100)
print('60 s mixture written')"
    step separate_60s -- "$PY" src/separate.py "ckpt=$SEP_CKPT" "input=$OUT/mix60.wav" "output=$OUT/separated" \
        device=$DEVICE "paths.log_dir=$OUT/runs"
    step eval_fast_bsseval -- "$PY" src/eval.py "ckpt=$SEP_CKPT" +callbacks=museval \
        callbacks.museval.test_backend=fast trainer.accelerator=$ACCEL "paths.log_dir=$OUT/runs"
else
    ROWS+=("separate_60s|skipped|0|no separation checkpoint (separation_bf16 failed)")
    FAILED=1
fi
step bsseval_cuda_vs_cpu -- "$PY" - <<'PY'
import os
import time

import numpy as np
import torch
from audiolab.data.synth_musdb import render_track
from audiolab.metrics.bss_eval import bss_eval_v4

stems = render_track(seed=3, duration=60.0)
refs = np.stack([stems[k].T for k in ("drums", "bass", "other", "vocals")]).astype(np.float64)
rng = np.random.default_rng(0)
ests = refs + 0.1 * rng.standard_normal(refs.shape) + 0.05 * refs[::-1]
seconds, scores = {}, {}
other = os.environ["GPU_CHECK_DEVICE"]  # cuda (cpu in a dry run)
for device in ("cpu", other):
    r, e = torch.from_numpy(refs).to(device), torch.from_numpy(ests).to(device)
    bss_eval_v4(r, e)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    scores[device] = {k: v.cpu().numpy() for k, v in bss_eval_v4(r, e).items()}
    if device == "cuda":
        torch.cuda.synchronize()
    seconds[device] = time.perf_counter() - start
diff = {k: float(np.nanmax(np.abs(scores["cpu"][k] - scores[other][k]))) for k in scores["cpu"]}
same_nan = all((np.isnan(scores["cpu"][k]) == np.isnan(scores[other][k])).all() for k in diff)
assert same_nan and max(diff.values()) < 1e-6, (diff, same_nan)
print(f"cpu {seconds['cpu']:.2f} s, {other} {seconds[other]:.2f} s ({seconds['cpu'] / seconds[other]:.1f}x), "
      f"max |diff| " + ", ".join(f"{k} {v:.1e}" for k, v in diff.items()))
PY

echo
echo "audiolab GPU check: $("$PY" -c "import torch; print((torch.cuda.get_device_name(0) + ' x ' + str(torch.cuda.device_count())) if torch.cuda.is_available() else 'CPU dry run', '| torch', torch.__version__)")"
printf '%-22s %-8s %6s  %s\n' step result seconds detail
for row in "${ROWS[@]}"; do
    IFS='|' read -r name result secs detail <<<"$row"
    printf '%-22s %-8s %6s  %s\n' "$name" "$result" "$secs" "$detail"
done
exit $FAILED
