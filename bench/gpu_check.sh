#!/usr/bin/env bash
# The GPU check in one call: the honest --full benchmark and tests/test_gpu.py, as one JSON object.
#
#     bash bench/gpu_check.sh            # from the repository root, with the venv active (~8 minutes)
#
# 1. the production step (default optimizer, the loop's syncs) at 1024^2, batch 1 and 4, gradient
#    checkpointing on and off, and the defaults with vram: auto; peak VRAM per configuration, the
#    VAE cache and preview speed (~3 min);
# 2. the same step compiled as the loop compiles it (inductor), batch 4 with the defaults (~2 min,
#    most of it compiling);
# 3. python -m pytest -q tests/test_gpu.py (~3 min);
# 4. each network kind's forms on one full-width block in bf16 at 4096 tokens (a 1024^2 image):
#    bench/network_forms.py, LoKr bypass vs merged, LoHa merged vs bypass, against LoRA (~1 min).
# Each part has its own time limit, so one that hangs still leaves the others' results. Written
# without a GPU at hand: it has not been run on one yet. A dry run of the whole script on a CPU:
#     BENCH_EXTRA="--device cpu --tiny" bash bench/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
OUT=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
timeout 210 "$PY" bench/train_bench.py --full --steps 6 --warmup 2 ${BENCH_EXTRA:-} > "$OUT/eager.json" 2> "$OUT/eager.err"
echo $? > "$OUT/eager.rc"
timeout 150 "$PY" bench/train_bench.py --full --compile --plans 4:on:auto --steps 6 --warmup 3 --no-previews ${BENCH_EXTRA:-} \
    > "$OUT/compiled.json" 2> "$OUT/compiled.err"
echo $? > "$OUT/compiled.rc"
timeout 200 "$PY" -m pytest -q -rs tests/test_gpu.py > "$OUT/pytest.txt" 2>&1
echo $? > "$OUT/pytest.rc"
timeout 120 "$PY" bench/network_forms.py --device "${FORMS_DEVICE:-cuda}" --dtypes bf16 --tokens 4096 --repeats 5 \
    > "$OUT/forms.json" 2> "$OUT/forms.err"
echo $? > "$OUT/forms.rc"
"$PY" - "$OUT" <<'PYEOF'
import json, pathlib, sys

out = pathlib.Path(sys.argv[1])

def part(name):
    rc = int((out / f"{name}.rc").read_text())
    text = (out / f"{name}.json").read_text().strip()
    try:
        return {"rc": rc, **json.loads(text.splitlines()[-1])}
    except (ValueError, IndexError):
        return {"rc": rc, "error": (out / f"{name}.err").read_text()[-2000:]}

pytest = (out / "pytest.txt").read_text()
print(json.dumps({"gpu": (out / "gpu.txt").read_text().strip(), "eager": part("eager"),
                  "compiled": part("compiled"), "network_forms": part("forms"),
                  "pytest_rc": int((out / "pytest.rc").read_text()),
                  "pytest_tail": pytest.strip().splitlines()[-12:]}, indent=1))
PYEOF
