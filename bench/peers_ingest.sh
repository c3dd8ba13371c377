#!/usr/bin/env bash
# The shared peers harness (../shared/bench/peers/run.sh) with this tree's `vault serve` plugged in:
# embedded default, in-process jobs (the full face search of every upload runs as it would), YuNet
# when ../shared/models has it. Prints run.sh's table (vault vs Orthanc ingest at c=1 and c=4).
#     bash bench/peers_ingest.sh            # extra env is passed to run.sh (REPS, PEERS, ...)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
TMP=$(mktemp -d /tmp/vault-peers-XXXXXX)
export VAULT_DATA_DIR=$TMP/data VAULT_ROOT_KEY_URL=file://$TMP/keyring VAULT_LOG_LEVEL=WARNING
unset VAULT_DATABASE_URL VAULT_KEYSTORE_URL VAULT_STORAGE_URL
MODEL=$ROOT/../shared/models/face_detection_yunet.onnx
[[ -f $MODEL ]] && export VAULT_FACE_MODEL=$MODEL
cd "$ROOT"
"$PY" -m vault.cli migrate >/dev/null
"$PY" -m vault.cli tenant create peers >/dev/null
TOKEN=$("$PY" -m vault.cli token create --tenant peers --role practitioner --label peers | tail -n1)
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PY" -m vault.cli serve --host 127.0.0.1 --port "$PORT" >/dev/null &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; rm -rf "$TMP"' EXIT
BASE=http://127.0.0.1:$PORT
for _ in $(seq 600); do curl -fs "$BASE/readyz" >/dev/null && break; sleep 0.2; done
PID=$(curl -fs -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"external_ref": "PEERS-1"}' "$BASE/v1/patients" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
[[ -f /tmp/peers-data/photo12mp.jpg ]] || /tmp/peers-venv/bin/python "$ROOT/../shared/bench/peers/gen_images.py" >/dev/null
MEDIA=$(curl -fs -H "Authorization: Bearer $TOKEN" -H 'Content-Type: image/jpeg' --data-binary @/tmp/peers-data/photo12mp.jpg \
  "$BASE/v1/patients/$PID/media?phase=before" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
VAULT_INGEST_URL="$BASE/v1/patients/$PID/media?phase=before" VAULT_THUMB_URL="$BASE/v1/media/$MEDIA/thumbnail?size=256" \
  VAULT_TOKEN=$TOKEN bash "$ROOT/../shared/bench/peers/run.sh"
echo "vault server RSS now: $(awk '/VmRSS/ {print $2 / 1024 " MiB"}' /proc/$SERVER/status)"
