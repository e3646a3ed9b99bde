#!/usr/bin/env bash
# Run upstream Complement (unmodified) against Plait processes, without Docker.
# See complement/README.md.
#
#   complement/run.sh                    run, write results.jsonl, compare with baseline.jsonl
#   complement/run.sh --update-baseline  copy results.jsonl to baseline.jsonl (runs first if
#                                        there are no results yet)
#
# Environment:
#   PLAIT_BIN            Plait binary (default ${CARGO_TARGET_DIR:-<repo>/target}/release/plait,
#                        built with `cargo build --release` when missing)
#   COMPLEMENT_TIMEOUT   whole-run limit, N[smh] (default 30m)
#   COMPLEMENT_TEST_TIMEOUT  per-test limit, Go duration (default 5m): the test's
#                        servers are killed and the test fails
#   COMPLEMENT_RUN       go test -run regex (default: all tests)
#   COMPLEMENT_PACKAGES  packages (default: the tests and tests/csapi packages)
#   COMPLEMENT_PARALLEL  go test -parallel (default 2)
#   COMPLEMENT_SPAWN_HS_TIMEOUT_SECS  start-up limit per server (default 30)
#   PLAIT_COMPLEMENT_SERVER_NAMES  hs (default) | ip   (see README.md)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
work="$here/work"
mod="github.com/matrix-org/complement"

update_baseline=0
for arg in "$@"; do
  case "$arg" in
    --update-baseline) update_baseline=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

if [[ $update_baseline == 1 && -s "$here/results.jsonl" ]]; then
  cp "$here/results.jsonl" "$here/baseline.jsonl"
  echo "baseline.jsonl updated from results.jsonl ($(grep -c '"result":"pass"' "$here/baseline.jsonl" || true) passes)"
  exit 0
fi

export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "run.sh: Go is not installed" >&2; exit 2; }

to_secs() {
  local v=$1
  case $v in
    *h) echo $(( ${v%h} * 3600 )) ;;
    *m) echo $(( ${v%m} * 60 )) ;;
    *s) echo "${v%s}" ;;
    *) echo "$v" ;;
  esac
}

start=$(date +%s)
timeout_total="${COMPLEMENT_TIMEOUT:-30m}"

# --- Plait -------------------------------------------------------------------
if [[ -z "${PLAIT_BIN:-}" ]]; then
  target="${CARGO_TARGET_DIR:-$root/target}"
  [[ "$target" == /* ]] || target="$root/$target"
  PLAIT_BIN="$target/release/plait"
fi
if [[ ! -x "$PLAIT_BIN" ]]; then
  echo "run.sh: no Plait binary at $PLAIT_BIN; building it (cargo build --release)"
  (cd "$root" && cargo build --release)
fi
[[ -x "$PLAIT_BIN" ]] || { echo "run.sh: still no Plait binary at $PLAIT_BIN" >&2; exit 2; }
export PLAIT_BIN

# --- Complement environment --------------------------------------------------
# The base image is never used (no Docker) but Complement's config insists on one.
export COMPLEMENT_BASE_IMAGE="${COMPLEMENT_BASE_IMAGE:-plait-process-deployer}"
# Plait must reach Complement's in-process federation servers on loopback.
export COMPLEMENT_HOSTNAME_RUNNING_COMPLEMENT=127.0.0.1
export PLAIT_COMPLEMENT_WORKDIR="$work/servers"
# Missing go.sum lines (e.g. after a version bump) are filled in from the proxy.
export GOFLAGS="${GOFLAGS:-} -mod=mod"

rm -rf "$work"
mkdir -p "$work"
cd "$here"

read -r -a packages <<<"${COMPLEMENT_PACKAGES:-$mod/tests $mod/tests/csapi}"

go build -o "$work/harness" ./cmd/harness
# (generated .go files live under a "_" directory so `go vet ./...` ignores them)
overlay="$("$work/harness" overlay "$work/_overlay" "${packages[@]}")"

# Tests that deploy Docker blueprints (complement.OldDeploy) cannot run here.
"$work/harness" needs-docker "${packages[@]}" >"$here/needs-docker.txt"
skip_re=""
if [[ -s "$here/needs-docker.txt" ]]; then
  skip_re="^($(awk '{print $2}' "$here/needs-docker.txt" | sort -u | paste -sd'|'))\$"
fi

args=(test -json -count=1 -overlay "$overlay" -timeout "$(to_secs "$timeout_total")s"
      -parallel "${COMPLEMENT_PARALLEL:-2}")
[[ -n "$skip_re" ]] && args+=(-skip "$skip_re")
[[ -n "${COMPLEMENT_RUN:-}" ]] && args+=(-run "$COMPLEMENT_RUN")

echo "run.sh: Plait $PLAIT_BIN; Complement $(go list -m -f '{{.Version}}' "$mod"); packages ${packages[*]}"
echo "run.sh: go ${args[*]} ${packages[*]}"
set +e
# `timeout` signals its whole process group (go, the test binaries); each Plait
# process dies with the test binary that started it (PR_SET_PDEATHSIG).
# Outer limit: go test's own -timeout plus two minutes for compiling.
timeout --kill-after=30s "$(( $(to_secs "$timeout_total") + 120 ))" \
  go "${args[@]}" "${packages[@]}" >"$work/gotest.json" 2>"$work/gotest.stderr"
status=$?
set -e
if [[ $status == 124 || $status == 137 ]]; then
  echo "run.sh: the whole run hit COMPLEMENT_TIMEOUT=$timeout_total" >&2
fi
if ! grep -q '"Test":' "$work/gotest.json"; then
  echo "run.sh: no test ran (go test exit $status):" >&2
  tail -n 40 "$work/gotest.stderr" "$work/gotest.json" >&2
  exit 2
fi
tail -n 20 "$work/gotest.stderr" >&2 || true

"$work/harness" results "$work/gotest.json" "$here/needs-docker.txt" "$here/results.jsonl" | tee "$work/summary.txt"
elapsed=$(( $(date +%s) - start ))
echo "run.sh: took $((elapsed / 60))m$((elapsed % 60))s (go test output: $work/gotest.json)"

if [[ $update_baseline == 1 ]]; then
  cp "$here/results.jsonl" "$here/baseline.jsonl"
  echo "baseline.jsonl updated"
  exit 0
fi
touch "$here/baseline.jsonl"
"$work/harness" compare "$here/baseline.jsonl" "$here/results.jsonl"
