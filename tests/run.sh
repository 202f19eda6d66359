#!/usr/bin/env bash
# tests/run.sh -- run the test suite against real services, the way CI does.
#
#   bash tests/run.sh                       every test (trial --jobs 2 tests)
#   bash tests/run.sh tests.domain          a subset; any trial arguments pass through
#   bash tests/run.sh --jobs=1 -x tests     (use the --opt=value form for options with a value)
#
# 1. creates the virtualenv .venv (python3 -m venv) if needed and installs the project into it
#    editable with its test extras (again whenever setup.py/setup.cfg change or a module is
#    added or removed);
# 2. installs the services the tests need (tests/services.sh; apt, so only as root) if any is
#    missing, starts them on 127.0.0.1 and exports their addresses (PPC_TEST_*_URL);
# 3. runs trial, then stops the services it started (once no other run.sh is using them);
# 4. exits with trial's status, after a last line "N passed, N failed, N skipped".
#
# Environment: PPC_SERVICES="postgres redis" picks the services to run (empty: none; point
# PPC_TEST_*_URL at your own instead), PPC_TRIAL_JOBS (default 2; 1 = no --jobs),
# PPC_TRIAL_TIMEOUT (seconds, default 2400: then trial is killed and the run fails), PPC_VENV
# (default .venv), PPC_SUMMARY_FILE (also write the summary line there).  With CI=true a
# test whose service is missing fails instead of being skipped (tests/realservices.py).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
VENV=${PPC_VENV:-$ROOT/.venv}
SERVICES=(bash "$ROOT/tests/services.sh")
SERVICES_DIR=${PPC_SERVICES_DIR:-/tmp/pypicloud-tx-services}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

log() { printf '[%(%H:%M:%S)T] run.sh: %s\n' -1 "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.1f", e - s }'; }
in_ci() { [[ ${CI:-} =~ ^([Tt]rue|TRUE|1|[Yy]es)$ ]]; }
T0=$(now)

# ------------------------------------------------------------------ 1. virtualenv
if [[ ! -x $VENV/bin/python ]]; then
  log "creating $VENV"
  python3 -m venv "$VENV" || { log "python3 -m venv failed (Debian: apt-get install python3-venv)"; exit 1; }
fi
# Reinstall when the packaging changes or a module appears or goes: the editable install is in
# setuptools' strict mode (setup.cfg), a tree of links that knows only the files it was made with.
stamp=$({
  cat setup.py setup.cfg requirements-test.txt 2>/dev/null
  find src twisted -type f \( -name '*.py' -o -name '*.html' -o -name py.typed \) | LC_ALL=C sort
} | sha256sum | cut -d ' ' -f 1)
if [[ $(cat "$VENV/.ppc-test-install" 2>/dev/null) != "$stamp" ]] ||
  ! "$VENV/bin/python" -c 'import pypicloud_tx, twisted.trial, hypothesis' 2>/dev/null; then
  t=$(now)
  reqs=(-e '.[test]')
  [[ -f requirements-test.txt ]] && reqs+=(-r requirements-test.txt)
  # uv (one of the test extras) resolves and downloads in parallel: about 20 s here where pip
  # takes about 2 minutes.  PPC_INSTALLER=pip, or uv failing to install, falls back to pip.
  pip_log=$(mktemp "${TMPDIR:-/tmp}/ppc-pip.XXXXXX")
  if [[ ${PPC_INSTALLER:-uv} != uv ]] ||
    ! { "$VENV/bin/python" -m pip install -q uv &&
      "$VENV/bin/python" -m uv pip install -q --python "$VENV/bin/python" \
        --reinstall-package pypicloud-tx "${reqs[@]}"; } \
      >"$pip_log" 2>&1; then
    [[ ${PPC_INSTALLER:-uv} != uv ]] || { cat "$pip_log" >&2; log "uv failed; trying pip"; }
    if ! "$VENV/bin/python" -m pip install -q "${reqs[@]}" >"$pip_log" 2>&1; then
      cat "$pip_log" >&2
      log "pip install ${reqs[*]} failed"
      exit 1
    fi
  fi
  rm -f "$pip_log"
  echo "$stamp" >"$VENV/.ppc-test-install"
  log "installed the project and its test dependencies into $VENV in $(since "$t")s"
fi

# ------------------------------------------------------------------ 2. services
# Several run.sh may share the services (two terminals, two engineers).  Each holds a shared
# "in use" lock while it runs; checking, starting and stopping happen under an exclusive
# "start" lock; the last run.sh out stops the services that a run.sh started.  Services
# started by hand (tests/services.sh start) are left running.
mkdir -p "$SERVICES_DIR"
STARTED_LIST=$SERVICES_DIR/started-by-run.sh
exec 8>>"$SERVICES_DIR/run.sh.start.lock" 9>>"$SERVICES_DIR/run.sh.use.lock"
flock -x 8
flock -s 9

stop_services() {
  trap - EXIT
  flock -x 8
  flock -u 9
  if ! flock -xn 9; then
    log "services left running: another tests/run.sh is using them"
  elif [[ -s $STARTED_LIST ]]; then
    # shellcheck disable=SC2046  # one name a line
    "${SERVICES[@]}" stop $(sort -u "$STARTED_LIST") || log "could not stop every service"
    rm -f "$STARTED_LIST"
  fi
  flock -u 9
  flock -u 8
}

down=()
while read -r name state _; do
  [[ $state == up ]] || down+=("${name%:}")
done < <("${SERVICES[@]}" status)
if ((${#down[@]})); then
  mapfile -t missing < <("${SERVICES[@]}" missing "${down[@]}")
  if ((${#missing[@]})) && [[ $(id -u) == 0 ]]; then
    "${SERVICES[@]}" install "${missing[@]}" || { log "installing ${missing[*]} failed"; exit 1; }
    missing=()
  fi
  if ((${#missing[@]})); then
    log "NOT INSTALLED, SKIPPED: ${missing[*]} -- tests that need them are skipped" \
      "(and fail under CI=true); install them with: sudo bash tests/services.sh install"
    in_ci && exit 1
    mapfile -t down < <(printf '%s\n' "${down[@]}" | grep -vxF -f <(printf '%s\n' "${missing[@]}"))
  fi
fi
trap stop_services EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if ((${#down[@]})); then
  printf '%s\n' "${down[@]}" >>"$STARTED_LIST"
  if ! "${SERVICES[@]}" start "${down[@]}"; then
    in_ci && { log "services failed to start"; exit 1; }
    log "some services failed to start: the tests that need them are skipped"
  fi
fi
flock -u 8
eval "$("${SERVICES[@]}" env)"
env | grep -E '^PPC_TEST_' | sed 's/^/  /' >&2 || log "no service is running"

# ------------------------------------------------------------------ 3. trial
# tests/ is not installed: put the checkout on the path (trial does not add the cwd).
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
jobs=${PPC_TRIAL_JOBS:-2} targets=()
for arg in "$@"; do
  case $arg in
    -j* | --jobs* | --debug | -b | --debugger* | --until-failure | -u | --coverage) jobs=1 ;;
    -*) ;;
    *) targets+=("$arg") ;;
  esac
done
# trial --jobs hangs after "PASSED" when it is given no test at all (Twisted 26.10), and its
# workers cost more than they save on a few tests: count the tests of an explicit subset.
if ((jobs > 1 && ${#targets[@]})); then
  n=$("$VENV/bin/python" -c 'import sys
from twisted.trial.runner import TestLoader
print(TestLoader().loadByNames(sys.argv[1:], recurse=True).countTestCases())' "${targets[@]}" \
    2>/dev/null) || n=0
  ((n >= 20)) || jobs=1
fi
trial=(timeout -k 30 "${PPC_TRIAL_TIMEOUT:-2400}" "$VENV/bin/trial")
((jobs > 1)) && trial+=(--jobs "$jobs")
trial+=("$@")
((${#targets[@]})) || trial+=(tests)

OUT=$(mktemp "${TMPDIR:-/tmp}/ppc-trial.XXXXXX")
log "trial ${trial[*]:5}"
t=$(now)
"${trial[@]}" 2>&1 | tee "$OUT"
status=${PIPESTATUS[0]}
stop_services   # now, so that the summary below stays the last line

# ------------------------------------------------------------------ 4. summary
# trial ends with "PASSED (successes=N)" or "FAILED (skips=N, failures=N, errors=N, ...)".
closing=$(grep -E '^(PASSED|FAILED)( \(.*\))?$' "$OUT" | tail -n 1)
rm -f "$OUT"
count() { sed -nE "s/.*[(, ]$1=([0-9]+).*/\1/p" <<<"$closing" | grep . || echo 0; }
passed=$(($(count successes) + $(count expectedFailures)))
failed=$(($(count failures) + $(count errors) + $(count unexpectedSuccesses)))
skipped=$(count skips)
if ((status == 124 || status == 137)); then
  log "trial did not finish within PPC_TRIAL_TIMEOUT=${PPC_TRIAL_TIMEOUT:-2400}s and was killed"
fi
if [[ -z $closing ]]; then
  log "trial printed no summary (exit status $status)"
  ((status)) || status=1
fi
if ((status != 0 && failed == 0)); then
  log "trial exited with status $status: counting the run as one failure"
  failed=1
fi
if ((skipped)) && in_ci; then
  log "CI: $skipped test(s) skipped -- see [SKIPPED] above"
fi
log "trial ran in $(since "$t")s; run.sh total $(since "$T0")s"
summary="$passed passed, $failed failed, $skipped skipped"
[[ -n ${PPC_SUMMARY_FILE:-} ]] && echo "$summary" >"$PPC_SUMMARY_FILE"
echo "$summary"
exit "$status"
