#!/usr/bin/env bash
# A newcomer's first ten minutes, timed: a fresh clone, `make run` in the
# background, sign in with the printed login, post a 3-recipient job with the
# printed API token, and find all three messages in the Outbox.
#
#   bash scripts/newcomer.sh            # clones this checkout's HEAD
#   REPO=<url or path> bash scripts/newcomer.sh
#
# Prints each step and the wall time; exits non-zero when a step fails.
# The target on a 2-core machine is under 90 s, most of it pip.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO="${REPO:-$HERE}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/newcomer.XXXXXX")"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT="${PORT:-$(free_port)}"
# an address where no Redis answers, so the demo starts its own (nothing shared with this machine's Redis)
export REDIS_URL="${NEWCOMER_REDIS_URL:-redis://127.0.0.1:$(free_port)/0}"
# and SMTP submission on a free port (2525 may be another run's)
export OFFLOAD_SMTP_LISTEN="127.0.0.1:$(free_port)"
unset SECRET_KEY OFFLOAD_PUBLIC_URL DATABASE_URL OFFLOAD_INSTANCE_PATH FLASK_ENV OFFLOAD_ENV VIRTUAL_ENV || true
START=$(date +%s.%N)
RUN_PID=""

elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$START" "$(date +%s.%N)"; }
step() { echo "[$(elapsed) s] $*"; }
cleanup() {
  if [ -n "$RUN_PID" ] && kill -0 "$RUN_PID" 2>/dev/null; then
    kill -TERM -- "-$RUN_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$RUN_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$RUN_PID" 2>/dev/null || true
  fi
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "newcomer: FAILED: $*" >&2; [ -f "$WORK/run.log" ] && tail -40 "$WORK/run.log" >&2; exit 1; }

step "git clone $REPO"
git clone --quiet "$REPO" "$WORK/app"
cd "$WORK/app"

step "make run PORT=$PORT (background)"
setsid make run PORT="$PORT" > "$WORK/run.log" 2>&1 &
RUN_PID=$!

for _ in $(seq 1 1200); do  # up to 10 minutes: pip on a cold cache is most of it
  grep -q "Open http://" "$WORK/run.log" 2>/dev/null && curl -fs -o /dev/null "http://127.0.0.1:$PORT/healthz" && break
  kill -0 "$RUN_PID" 2>/dev/null || fail "make run exited"
  sleep 0.5
done
grep -q "Open http://" "$WORK/run.log" || fail "make run printed no login within 10 minutes"
LOGIN=$(sed -n 's/^ \* Demo login: \(.*\)$/\1/p' "$WORK/run.log" | head -1)
EMAIL=${LOGIN%% / *}
PASSWORD=${LOGIN##* / }
TOKEN=$(sed -n 's/^ \* Demo company API token (shown once): \(mro_[^ ]*\)$/\1/p' "$WORK/run.log" | head -1)
BASE="http://127.0.0.1:$PORT"
[ -n "$EMAIL" ] && [ -n "$PASSWORD" ] || fail "no login printed"
[ -n "$TOKEN" ] || fail "no API token printed"
step "serving at $BASE; login $EMAIL; token ${TOKEN:0:12}…"

JAR="$WORK/cookies"
CSRF=$(curl -fs -c "$JAR" "$BASE/login" | sed -n 's/.*name="csrf_token"[^>]*value="\([^"]*\)".*/\1/p' | head -1)
curl -fs -b "$JAR" -c "$JAR" -o "$WORK/home.html" -L --data-urlencode "email=$EMAIL" \
  --data-urlencode "password=$PASSWORD" --data-urlencode "csrf_token=$CSRF" "$BASE/login"
grep -q "Signed in as $EMAIL" "$WORK/home.html" || fail "the printed login did not sign in"
step "signed in"

BODY='{"type": "csv_import", "template": "welcome", "recipients": [
  {"email": "ann@example.com", "data": {"firstname": "Ann", "password": "Pw-ann-1"}},
  {"email": "bob@example.com", "data": {"firstname": "Bob", "password": "Pw-bob-2"}},
  {"email": "cid@example.com", "data": {"firstname": "Cid", "password": "Pw-cid-3"}}]}'
STATUS=$(curl -s -o "$WORK/job.json" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
  -H "Content-Type: application/json" --data "$BODY" "$BASE/api/v1/jobs")
[ "$STATUS" = "202" ] || fail "POST /api/v1/jobs answered $STATUS: $(cat "$WORK/job.json")"
step "job posted: $(python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); print("#%s %s" % (j["id"], j["status"]))' "$WORK/job.json")"

for _ in $(seq 1 120); do
  curl -fs -b "$JAR" "$BASE/admin/outbox/" > "$WORK/outbox.html" || true
  found=0
  for who in ann bob cid; do grep -q "$who@example.com" "$WORK/outbox.html" && found=$((found + 1)); done
  [ "$found" = 3 ] && break
  sleep 0.5
done
[ "$found" = 3 ] || fail "the Outbox shows $found of 3 messages after 60 s"
step "all three messages are in the Outbox"
echo "newcomer: OK, wall time $(elapsed) s (target < 90 s)"
