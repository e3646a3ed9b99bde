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
#   COMPLEMENT_TEST_TIMEOUT  per-test limit, N[smh] (default 5m): the test's
#                        servers are killed and the test fails
#   COMPLEMENT_RUN       go test -run regex (default: all tests)
#   COMPLEMENT_PACKAGES  packages (default: the tests and tests/csapi packages)
#   COMPLEMENT_PARALLEL  -test.parallel within one top-level test (default 2)
#   COMPLEMENT_JOBS      top-level tests run at once, each in its own process (default 2)
#   COMPLEMENT_SOURCES   folder with complement/, gomatrixserverlib/, gomatrix/, util/
#                        sources to use instead of the module proxy (a go.work replace);
#                        default: ../shared/complement-sources beside the clone, if it exists
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

# The upstream sources laid beside the clone (../shared/complement-sources), when the
# caller names none: resolved now, before any change of directory.
if [[ -z "${COMPLEMENT_SOURCES:-}" && -d "$root/../shared/complement-sources/complement" ]]; then
  COMPLEMENT_SOURCES="$(cd "$root/../shared/complement-sources" && pwd)"
fi

rm -rf "$work"
mkdir -p "$work/bin" "$work/out" "$work/tmp"
cd "$here"

# Upstream sources from a local folder instead of the module proxy (which refuses
# github.com/matrix-org/* on some networks): a go.work outside the module replaces them.
if [[ -n "${COMPLEMENT_SOURCES:-}" ]]; then
  src="$(cd "$COMPLEMENT_SOURCES" && pwd)"
  {
    echo "go $(sed -n 's/^go //p' go.mod)"
    echo "use $here"
    for m in complement gomatrixserverlib gomatrix util; do
      [[ -d "$src/$m" ]] && echo "replace github.com/matrix-org/$m => $src/$m"
    done
  } >"$work/go.work"
  export GOWORK="$work/go.work"
  GOFLAGS="${GOFLAGS//-mod=mod/}"   # workspace mode refuses -mod=mod
  echo "run.sh: Complement sources from $src"
fi

read -r -a packages <<<"${COMPLEMENT_PACKAGES:-$mod/tests $mod/tests/csapi}"

go build -o "$work/harness" ./cmd/harness
# (generated .go files live under a "_" directory so `go vet ./...` ignores them)
overlay="$("$work/harness" overlay "$work/_overlay" "${packages[@]}")"

# Tests that deploy Docker blueprints (complement.OldDeploy) cannot run here.
"$work/harness" needs-docker "${packages[@]}" >"$here/needs-docker.txt"

# Each top-level test runs in a test-binary process of its own: a panic in one test
# (which aborts a whole `go test` package binary) cannot take the others with it.
total_secs="$(to_secs "$timeout_total")"
# A test process gets the deployer's per-test limit plus a minute to report.
per_test_secs=$(( $(to_secs "${COMPLEMENT_TEST_TIMEOUT:-5m}") + 60 ))
: >"$work/jobs.txt"
for pkg in "${packages[@]}"; do
  name="${pkg//\//_}"
  if ! go test -c -overlay "$overlay" -o "$work/bin/$name.test" "$pkg" 2>"$work/build-$name.stderr"; then
    echo "run.sh: $pkg does not build:" >&2; tail -n 20 "$work/build-$name.stderr" >&2; continue
  fi
  dir="$(go list -f '{{.Dir}}' "$pkg")"
  while read -r t; do
    grep -qx "$pkg $t" "$here/needs-docker.txt" && continue
    [[ -n "${COMPLEMENT_RUN:-}" && ! "$t" =~ $COMPLEMENT_RUN ]] && continue
    echo "$pkg $dir $work/bin/$name.test $t" >>"$work/jobs.txt"
  done < <(cd "$dir" && "$work/bin/$name.test" -test.list '^Test' 2>/dev/null | grep '^Test')
done
echo "run.sh: Plait $PLAIT_BIN; Complement $(go list -m -f '{{.Version}}' "$mod"); $(wc -l <"$work/jobs.txt") top-level tests in ${packages[*]}"

run_one() {
  local pkg=$1 dir=$2 bin=$3 t=$4
  local out="$work/out/${pkg//\//_}__$t.json"
  # Each test process gets its own TMPDIR: upstream Complement writes every in-process
  # federation server's TLS key to $TMPDIR/complement.{crt,key}, so two tests sharing /tmp
  # overwrite each other's key mid-handshake.
  local tmp="$work/tmp/${pkg//\//_}__$t"
  mkdir -p "$tmp"
  (cd "$dir" && TMPDIR="$tmp" timeout --kill-after=20s "$per_test_secs" go tool test2json -t -p "$pkg" \
     "$bin" -test.v=test2json -test.count=1 -test.run "^$t\$" -test.parallel "${COMPLEMENT_PARALLEL:-2}" \
     -test.timeout "$((per_test_secs - 15))s" >"$out" 2>"$out.stderr") || echo "$pkg $t exit $?" >>"$work/exits.txt"
}
export -f run_one
export work per_test_secs
set +e
# Tests run COMPLEMENT_JOBS at a time; the whole run stops at COMPLEMENT_TIMEOUT (each
# Plait process dies with the test binary that started it, PR_SET_PDEATHSIG).
timeout --kill-after=30s "$total_secs" xargs -P "${COMPLEMENT_JOBS:-2}" -L 1 bash -c 'run_one "$@"' _ <"$work/jobs.txt"
status=$?
set -e
if [[ $status == 124 || $status == 137 ]]; then
  echo "run.sh: the whole run hit COMPLEMENT_TIMEOUT=$timeout_total" >&2
fi
cat "$work"/out/*.json >"$work/gotest.json" 2>/dev/null || true
if ! grep -q '"Test":' "$work/gotest.json"; then
  echo "run.sh: no test ran:" >&2
  tail -n 40 "$work"/build-*.stderr >&2 || true
  exit 2
fi


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
