#!/usr/bin/env bash
# Runs banger's Go fuzz targets, one after another: `go test -fuzz` takes one
# target per invocation. Every parser of untrusted bytes has one (the list
# below); each target's seed corpus lives in <package>/testdata/fuzz/<Name>/
# plus its f.Add seeds, and runs with plain `go test` too.
#
#   scripts/fuzz.sh            fuzz every target for $FUZZTIME (default 8s)
#   scripts/fuzz.sh -l         list the targets
#   scripts/fuzz.sh REGEXP     only targets whose "package Name" matches
#
# Environment:
#   FUZZTIME        time per target (go's -fuzztime: 8s, 2m, or 5000x)
#   FUZZ_MINIMIZE   -fuzzminimizetime (default 200x: minimizing new corpus
#                   entries for long would eat a short run)
#   FUZZ_PARALLEL   fuzzing workers per target (default: go's, GOMAXPROCS)
#
# A failing input is written to <package>/testdata/fuzz/<Name>/ by go test;
# commit it with the fix (it then runs as a regression test). The script runs
# every target even after a failure and exits 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

# package and target, one per line.
TARGETS=(
	"./internal/updater FuzzParseSHA256Sums"
	"./internal/updater FuzzParseManifest"
	"./internal/updater FuzzVerifyManifest"
	"./internal/trust FuzzVerifyBlobSignature"
	"./internal/updater FuzzStage"
	"./internal/catalog FuzzParseIndex"
	"./internal/catalog FuzzPullBundle"
	"./internal/oci FuzzFlatten"
	"./internal/agent FuzzAgentClient"
	"./internal/agent FuzzAgentServe"
	"./internal/agent FuzzIdentityResult"
	"./internal/fcvmm FuzzAPI"
	"./internal/vm FuzzValidateName"
	"./internal/config FuzzLoad"
	"./internal/config FuzzParseSize"
	"./internal/imagespec FuzzParse"
	"./internal/treecopy FuzzUnpack"
)

FUZZTIME=${FUZZTIME:-8s}
FUZZ_MINIMIZE=${FUZZ_MINIMIZE:-200x}
GO=${GO:-go}

# Every Fuzz function in the tree must be listed, so a new one is not
# silently left out of CI.
declare -A listed=()
for t in "${TARGETS[@]}"; do listed["$t"]=1; done
missing=0
while IFS=: read -r file line; do
	name=$(sed -E 's/^func (Fuzz[A-Za-z0-9_]*)\(.*/\1/' <<<"$line")
	key="./$(dirname "$file") $name"
	if [[ -z ${listed[$key]:-} ]]; then
		echo "fuzz.sh: $key ($file) is not in TARGETS; add it" >&2
		missing=1
	fi
done < <(grep -rE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' internal cmd)
((missing)) && exit 2

if [[ ${1:-} == -l ]]; then
	printf '%s\n' "${TARGETS[@]}"
	exit 0
fi
filter=${1:-}

# Some targets write and fsync small files each run: on tmpfs that costs
# nothing. Use /dev/shm for scratch when it is there.
if [[ -z ${FUZZ_TMPDIR:-} && -d /dev/shm && -w /dev/shm ]]; then
	FUZZ_TMPDIR=$(mktemp -d /dev/shm/banger-fuzz.XXXXXX)
	trap 'rm -rf "$FUZZ_TMPDIR"' EXIT
fi
[[ -n ${FUZZ_TMPDIR:-} ]] && export TMPDIR=$FUZZ_TMPDIR

parallel=()
[[ -n ${FUZZ_PARALLEL:-} ]] && parallel=(-parallel "$FUZZ_PARALLEL")

failed=()
flaked=()
ran=0
start=$SECONDS
for t in "${TARGETS[@]}"; do
	[[ -n $filter && ! $t =~ $filter ]] && continue
	read -r pkg name <<<"$t"
	echo "=== fuzz $pkg $name ($FUZZTIME)"
	t0=$SECONDS
	corpus="$pkg/testdata/fuzz/$name"
	before=$(ls "$corpus" 2>/dev/null | sort)
	out=$(mktemp)
	"$GO" test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZ_MINIMIZE" "${parallel[@]}" "$pkg" 2>&1 | tee "$out"
	rc=${PIPESTATUS[0]}
	if ((rc != 0)); then
		after=$(ls "$corpus" 2>/dev/null | sort)
		# Go 1.26's fuzz coordinator can fail a target with a bare "context
		# deadline exceeded" as -fuzztime ends, with no input at fault
		# (go.dev/issue/75804, fixed in Go 1.27). A failure counts when it
		# wrote a reproducer or says anything else.
		if [[ $before == "$after" ]] && grep -q '^    context deadline exceeded$' "$out" && ! grep -q 'Failing input written' "$out"; then
			echo "fuzz: $name: the fuzz coordinator's deadline race (go.dev/issue/75804), no failing input: not counted"
			flaked+=("$t")
		else
			failed+=("$t")
		fi
	fi
	rm -f "$out"
	echo "--- $name: $((SECONDS - t0))s"
	ran=$((ran + 1))
done
echo "fuzz: $ran targets in $((SECONDS - start))s${flaked:+, ${#flaked[@]} hit go.dev/issue/75804 (not counted)}"
if ((${#failed[@]})); then
	echo "fuzz: FAILED:" >&2
	printf '  %s\n' "${failed[@]}" >&2
	echo "fuzz: failing inputs are in each package's testdata/fuzz/<Name>/" >&2
	exit 1
fi
