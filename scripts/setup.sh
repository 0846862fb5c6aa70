# Sourced by the other scripts: installs what building and testing rctdb needs on Debian,
# skipping what is already there.

# Debian packages: libtdb (headers and library), its tools (tdbdump), clang for bindgen,
# python3-tdb for the interop tests, gcc for the C test programs, ctdb for ltdbtool (and the
# ctdbd baseline), tshark to check our packets with its CTDB dissector, and Samba (smbd,
# smbclient, smbtorture; pip for smbprotocol; make for the tdb preload) for stock smbd on
# rctdbd; iproute2 (ss) and procps (pgrep, pkill) for the Samba scripts.
RCTDB_PACKAGES=(libtdb-dev tdb-tools libclang-dev python3-tdb gcc ctdb tshark samba smbclient samba-testsuite
	python3-pip make iproute2 procps)

rctdb_install_packages() {
	local missing=() sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	for pkg in "${RCTDB_PACKAGES[@]}" "$@"; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		echo "installing: ${missing[*]}"
		$sudo apt-get update
		$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
	fi
	if ! /usr/bin/python3 -c 'import smbprotocol' 2>/dev/null; then
		echo "installing smbprotocol (scripted SMB2 for the Samba tests) with pip"
		$sudo /usr/bin/python3 -m pip install --quiet --break-system-packages smbprotocol
	fi
	if ! command -v cargo >/dev/null; then
		echo "installing the Rust toolchain with rustup"
		curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
		# shellcheck disable=SC1091
		. "$HOME/.cargo/env"
	fi
}

# Where cargo puts its build output (honours CARGO_TARGET_DIR).
rctdb_target_dir() {
	cargo metadata --format-version 1 --no-deps |
		/usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# The directory with this tree's release binaries (rctdb, rctdbd, librctdb.so), built with
# `cargo build --release ARGS...`; RCTDB_BIN_DIR names prebuilt ones instead (the README
# smoke test runs the scripts on the binaries `cargo test` built).
rctdb_bin_dir() {
	if [ -n "${RCTDB_BIN_DIR:-}" ]; then
		echo "$RCTDB_BIN_DIR"
		return
	fi
	cargo build --release "$@" >&2
	echo "$(rctdb_target_dir)/release"
}
