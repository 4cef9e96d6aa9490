#!/usr/bin/env bash
# Builds the HashiCorp Vault server used by the integration tests from the
# tools module tools/vault (kept out of the SDK's own go.mod), into a cache
# directory outside the repository, and prints the binary's path.
#
#   scripts/build-vault.sh            build if needed, print the path on stdout
#
# Environment:
#   ZONEKEY_VAULT_DIR  directory of the binary
#                      (default ${XDG_CACHE_HOME:-$HOME/.cache}/zonekey/vault-v1.21.0)
#
# The build is skipped when the binary exists and `vault version` reports the
# pinned version. A first build takes several minutes (it downloads Vault's
# dependencies and compiles them); later builds after a cache wipe reuse Go's
# build cache. Concurrent runs are serialised with a lock file next to the
# binary (flock(1) when available; package internal/vaulttest takes the same
# lock itself and tells this script so through ZONEKEY_VAULT_LOCK_HELD=1).
set -euo pipefail

readonly VAULT_VERSION=1.21.0

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/tools/vault"
dir="${ZONEKEY_VAULT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/zonekey/vault-v$VAULT_VERSION}"
bin="$dir/vault"
start=$SECONDS

log() { printf 'build-vault: %s\n' "$*" >&2; }

is_current() {
	[[ -x "$bin" ]] || return 1
	local v
	v="$("$bin" version 2>/dev/null)" || return 1
	[[ "$v" == "Vault v$VAULT_VERSION" || "$v" == "Vault v$VAULT_VERSION "* || "$v" == "Vault v$VAULT_VERSION,"* ]]
}

mkdir -p "$dir"

if [[ -z "${ZONEKEY_VAULT_LOCK_HELD:-}" ]] && command -v flock >/dev/null 2>&1; then
	exec 9>"$dir/vault.lock"
	flock 9
fi

if is_current; then
	log "up to date: $("$bin" version) ($((SECONDS - start))s)"
	printf '%s\n' "$bin"
	exit 0
fi

command -v go >/dev/null 2>&1 || { log "go is not on PATH"; exit 1; }
[[ -f "$tools/go.mod" ]] || { log "missing $tools/go.mod"; exit 1; }

log "building Vault v$VAULT_VERSION into $bin (the first build takes several minutes)"
tmp="$(mktemp "$dir/vault.tmp.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
(
	cd "$tools"
	# The tools module is built on its own, with exactly its go.mod and go.sum:
	# no workspace, no vendor directory, whatever the caller's GOFLAGS say.
	export GOWORK=off GOFLAGS=-mod=readonly
	go build -trimpath -ldflags="-s -w" -o "$tmp" github.com/hashicorp/vault
)
chmod 0755 "$tmp"
mv -f "$tmp" "$bin"
trap - EXIT

if ! is_current; then
	log "built binary does not report Vault v$VAULT_VERSION: $("$bin" version 2>&1 || true)"
	exit 1
fi
log "built $("$bin" version) in $((SECONDS - start))s"
printf '%s\n' "$bin"
