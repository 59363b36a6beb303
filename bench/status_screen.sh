#!/usr/bin/env bash
# The `animad status` screen of issue 13's closing note, from a real run: a training job, a selecting
# job, a folder settling in the inbox and a rejected folder, all at the same moment.
#
# It takes two job slots (gpus: [0, 1], parallel_jobs: true) on a tiny model set (`animad make-tiny`),
# so it runs on a CPU: one job trains for many epochs while another, which trains one epoch, renders
# its previews; then a folder with a fake .png is dropped (rejected) and a good one (settling). It
# polls `animad status` until all four show at once and prints that screen. Nothing is timed: every
# step waits for a state (with a hang guard).
#
#   bench/status_screen.sh [DIR]      (default: a new folder under /tmp; the daemon is stopped at the end)
set -euo pipefail

DIR=${1:-$(mktemp -d /tmp/animad-status-screen.XXXXXX)}
GUARD=${GUARD:-1800}  # seconds before a wait is called hung (a guard, not a budget)
mkdir -p "$DIR"
cd "$DIR"
animad make-tiny "$DIR/tiny" > "$DIR/make-tiny.txt"

python - "$DIR" <<'EOF'
import sys
from pathlib import Path

import yaml

from animad.demo.synthetic import make_dataset, tiny_job, write_daemon_config

root = Path(sys.argv[1])
tiny = root / "tiny"
models = {"dit": tiny / "dit.safetensors", "text_encoder": tiny / "text_encoder.safetensors",
          "vae": tiny / "vae.safetensors", "tokenizers": tiny / "tokenizers"}
# settle_seconds 8: long enough to catch the late drop settling, short enough to wait for.
write_daemon_config(root / "animad.yaml", models, gpus=[0, 1], parallel_jobs=True, windows=["always"],
                    settle_seconds=8, inhibit_sleep=False)
staging = root / "staging"
long = tiny_job(epochs=200, selection={"stop_at_floor": False}, data={"batch_size": 1, "repeats": 2})
make_dataset(staging / "portrait-style", count=8, seed=1, job=long)
quick = tiny_job(epochs=1, previews={"width": 128, "height": 128, "steps": 30})
make_dataset(staging / "quick-sketch", count=4, seed=2, job=quick)
bad = make_dataset(staging / "bad-scan", count=4, seed=3, job=tiny_job())
(bad / "img002.png").write_bytes(b"not a png at all")  # a fake .png: the folder is rejected
make_dataset(staging / "late-drop", count=4, seed=4, job=tiny_job())
EOF

CONFIG="$DIR/animad.yaml"
animad --config "$CONFIG" run > "$DIR/daemon.log" 2>&1 &
DAEMON=$!
trap 'kill -INT $DAEMON 2>/dev/null || true; wait $DAEMON 2>/dev/null || true' EXIT

status_json() { animad --config "$CONFIG" status --json; }
wait_for() {  # wait_for WHAT PYTHON-EXPRESSION-ON-data
    local what=$1 test=$2 start=$SECONDS
    until status_json | python -c "import json,sys; data=json.load(sys.stdin); sys.exit(0 if ($test) else 1)"; do
        if (( SECONDS - start > GUARD )); then echo "hung waiting for $what" >&2; tail -40 "$DIR/daemon.log" >&2; exit 1; fi
        sleep 0.5
    done
}
job_is() { echo "any(j['name'] == '$1' and j['status'] == '$2' for j in data['jobs'])"; }
inbox_is() { echo "any(e['folder'].endswith('/$1') and e['state'] == '$2' for e in data['inbox'])"; }

mkdir -p "$DIR/inbox"
mv "$DIR/staging/portrait-style" "$DIR/staging/quick-sketch" "$DIR/inbox/"
wait_for "a training job and a selecting job" "$(job_is portrait-style running) and $(job_is quick-sketch selecting)"
# Until the previews are being rendered, so the screen shows their count and ETA.
wait_for "the previews" "any(j['name'] == 'quick-sketch' and (j['progress'] or {}).get('phase') == 'previews' and \
(j['progress'] or {}).get('done') for j in data['jobs'])"
mv "$DIR/staging/bad-scan" "$DIR/inbox/"
wait_for "the rejected folder" "$(inbox_is bad-scan rejected) and $(job_is quick-sketch selecting)"
# Copied in (not moved: a folder moved in whole is taken at once), so it settles for settle_seconds.
cp -r "$DIR/staging/late-drop" "$DIR/inbox/"
all4="$(job_is portrait-style running) and $(job_is quick-sketch selecting) and $(inbox_is bad-scan rejected)"
all4="$all4 and $(inbox_is late-drop settling)"
start=$SECONDS
until screen=$(animad --config "$CONFIG" status) && status_json | python -c "import json,sys; data=json.load(sys.stdin); sys.exit(0 if ($all4) else 1)" \
        && grep -q "settling" <<<"$screen" && grep -q "selecting" <<<"$screen" && grep -q "rejected" <<<"$screen"; do
    if (( SECONDS - start > GUARD )); then echo "hung waiting for all four at once" >&2; exit 1; fi
    sleep 0.3
done
echo "\$ animad status"
echo "$screen"
