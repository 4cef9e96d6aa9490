#!/usr/bin/env bash
# Compares zonekey's benchmarks (package ./bench) between a base ref and the
# working tree, through benchstat.
#
#   scripts/benchcmp.sh [flags] [BASE_REF] [-- test binary flags]
#
#   BASE_REF        the commit to compare with (default: the merge base of
#                   HEAD and origin/main, else of HEAD and main, else HEAD)
#   -bench REGEX    benchmarks to run (default ".": all of them)
#   -count N        runs of each benchmark on each side (default 10)
#   -benchtime D    duration of each run (default 250ms)
#   -same           run the working tree's bench/ on both sides, so that only
#                   the library differs (default: each side runs its own
#                   bench/; a base without one gets the working tree's)
#   -o DIR          keep the raw results (base.txt, head.txt) in DIR
#
# The base is checked out with `git worktree` in a temporary directory; the
# "head" side is the working tree as it is, uncommitted changes included.
# Each side's test binary is built once, then the runs alternate between the
# two sides (base, head, head, base, ...), so that a slow spell of a shared
# machine hits both alike instead of one side's whole series.
#
# Examples:
#   scripts/benchcmp.sh                                  # everything against the merge base
#   scripts/benchcmp.sh -bench 'Field|Struct|Floor' main
#   scripts/benchcmp.sh HEAD~1 -- -test.cpu 1
#
# Benchmarks that need a Vault skip unless one is at hand (see bench/README.md).
set -euo pipefail

readonly BENCHSTAT=golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { printf 'benchcmp: %s\n' "$*" >&2; exit 2; }
log() { printf 'benchcmp: %s\n' "$*" >&2; }

bench=. count=10 benchtime=250ms same=0 out="" base=""
extra=()
while (($#)); do
	case "$1" in
	-bench) bench=${2:?-bench needs a value}; shift 2 ;;
	-count) count=${2:?-count needs a value}; shift 2 ;;
	-benchtime) benchtime=${2:?-benchtime needs a value}; shift 2 ;;
	-same) same=1; shift ;;
	-o) out=${2:?-o needs a directory}; shift 2 ;;
	-h | -help | --help) usage; exit 0 ;;
	--) shift; extra=("$@"); break ;;
	-*) die "unknown flag $1 (see $0 -h)" ;;
	*) [[ -z $base ]] || die "more than one BASE_REF"; base=$1; shift ;;
	esac
done
[[ $count =~ ^[1-9][0-9]*$ ]] || die "-count must be a positive integer"

root=$(git rev-parse --show-toplevel 2>/dev/null) || die "not in a git repository"
cd "$root"
git rev-parse --verify -q HEAD >/dev/null || die "the repository has no commit yet: there is no base to compare with"

if [[ -z $base ]]; then
	for ref in origin/main main; do
		if git rev-parse --verify -q "$ref^{commit}" >/dev/null; then
			base=$(git merge-base HEAD "$ref") && break
		fi
	done
	: "${base:=HEAD}"
fi
base_sha=$(git rev-parse --verify -q "$base^{commit}") || die "unknown ref $base"
head_desc="working tree at $(git rev-parse --short HEAD)"
[[ -z $(git status --porcelain --untracked-files=no) ]] || head_desc+=" with uncommitted changes"
log "base: $base ($(git rev-parse --short "$base_sha")); head: $head_desc"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/zonekey-benchcmp.XXXXXX")
cleanup() {
	git worktree remove --force "$tmp/base" >/dev/null 2>&1 || true
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

git worktree add --quiet --detach "$tmp/base" "$base_sha"
[[ -d $root/bench ]] || die "the working tree has no bench/"
copied=0
if ((same)) || [[ ! -d $tmp/base/bench ]]; then
	[[ -d $tmp/base/bench ]] || log "the base has no bench/: running the working tree's benchmarks on it"
	rm -rf "$tmp/base/bench"
	cp -R "$root/bench" "$tmp/base/bench"
	copied=1
fi

build() { # side dir
	log "building the $1 benchmarks"
	(cd "$2" && go test -c -o "$tmp/$1.test" ./bench) && return
	[[ $1 == base && ( $same == 1 || $copied == 1 ) ]] &&
		die "the working tree's bench/ does not build against the base (its API differs); compare with a later base"
	die "the $1 benchmarks do not build"
}
build base "$tmp/base"
build head "$root"

runside() { # side dir
	(cd "$2/bench" && "$tmp/$1.test" -test.run '^$' -test.bench "$bench" -test.benchtime "$benchtime" \
		-test.count 1 -test.benchmem "${extra[@]}") >>"$tmp/$1.txt" 2>"$tmp/$1.err" || {
		cat "$tmp/$1.err" >&2
		die "the $1 benchmarks failed"
	}
}
for ((i = 1; i <= count; i++)); do
	log "run $i/$count"
	if ((i % 2)); then
		runside base "$tmp/base"
		runside head "$root"
	else
		runside head "$root"
		runside base "$tmp/base"
	fi
done

if [[ -n $out ]]; then
	mkdir -p "$out"
	cp "$tmp/base.txt" "$tmp/head.txt" "$out/"
	log "raw results in $out/base.txt and $out/head.txt"
fi
(cd "$tmp" && go run "$BENCHSTAT" base=base.txt head=head.txt)
