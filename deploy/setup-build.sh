#!/usr/bin/env bash
# Installs what building agent-guard needs, and nothing more (with --test, also what its tests
# use). Idempotent: when everything is already there it only checks and returns within a
# second or two.
#
#   - Debian packages: LLVM 22 dev files (bpf-linker links against the LLVM that rustc uses),
#     and the libraries bpf-linker's build needs;
#   - the nightly toolchain with rust-src (the eBPF crate is built with -Z build-std=core);
#   - bpf-linker 0.13.0 built against LLVM 22;
#   - with --test: shellcheck, and promtool (the metrics tests check a live scrape and deploy/prometheus-alerts.yml
#     with it);
#   - with --vm: qemu-system-x86, busybox-static and cpio (`cargo xtask vm-test` boots Debian
#     kernels with BPF LSM under QEMU).
#
# Runs as root (apt). Set AG_SETUP_QUIET=1 to silence the "already there" lines.
set -euo pipefail

LLVM_VERSION=22
BPF_LINKER_VERSION=0.13.0
NIGHTLY=nightly
APT_PACKAGES=("llvm-${LLVM_VERSION}-dev" "libpolly-${LLVM_VERSION}-dev" libzstd-dev zlib1g-dev pkg-config)
VM_PACKAGES=(qemu-system-x86 busybox-static cpio)

say() { [ "${AG_SETUP_QUIET:-0}" = 1 ] || echo "setup-build: $*" >&2; }
die() { echo "setup-build: error: $*" >&2; exit 1; }

TEST_TOOLS=0
VM_TOOLS=0
for arg in "$@"; do
    case "$arg" in
        --test) TEST_TOOLS=1 ;;
        --vm) VM_TOOLS=1 ;;
        *) die "unknown argument $arg (usage: setup-build.sh [--test] [--vm])" ;;
    esac
done

export PATH="$HOME/.cargo/bin:$PATH"
command -v rustup >/dev/null || die "rustup is not installed; install it from https://rustup.rs first"

# 1. Debian packages.
if [ "$VM_TOOLS" = 1 ]; then APT_PACKAGES+=("${VM_PACKAGES[@]}"); fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "need root to install: ${missing[*]}"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; then
        apt-get update >/dev/null
        apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
    fi
else
    say "debian packages present"
fi

# 2. Nightly with rust-src.
if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1; then
    say "installing the $NIGHTLY toolchain"
    rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src
fi
if ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
    say "adding rust-src to $NIGHTLY"
    rustup component add rust-src --toolchain "$NIGHTLY"
else
    say "$NIGHTLY with rust-src present"
fi

# 3. bpf-linker against LLVM 22.
if bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
    say "bpf-linker $BPF_LINKER_VERSION present"
else
    say "building bpf-linker $BPF_LINKER_VERSION against LLVM $LLVM_VERSION (about a minute)"
    env "LLVM_SYS_${LLVM_VERSION}1_PREFIX=/usr/lib/llvm-${LLVM_VERSION}" \
        RUSTFLAGS="-L /usr/lib/llvm-${LLVM_VERSION}/lib" \
        cargo +stable install --locked bpf-linker --version "$BPF_LINKER_VERSION" \
            --no-default-features --features llvm-${LLVM_VERSION} --force
fi

# 4. With --test: promtool, from Debian's prometheus package. Only that binary (statically
#    linked) is taken: installing the package would also start a Prometheus server and pull
#    in its web assets, none of which the tests need.
if [ "$TEST_TOOLS" = 1 ]; then
    if command -v promtool >/dev/null; then
        say "promtool present"
    else
        [ "$(id -u)" = 0 ] || die "need root to install promtool into /usr/local/bin"
        say "installing promtool from Debian's prometheus package"
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        get() { (cd "$tmp" && apt-get download -o APT::Sandbox::User=root prometheus >/dev/null); }
        get || { apt-get update >/dev/null && get; } || die "cannot download Debian's prometheus package (for promtool)"
        dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
        install -m 0755 "$tmp/usr/bin/promtool" /usr/local/bin/promtool
        promtool --version >/dev/null || die "promtool does not run"
    fi
    # The install tests lint deploy/*.sh and the maintainer scripts with shellcheck.
    if command -v shellcheck >/dev/null; then
        say "shellcheck present"
    else
        [ "$(id -u)" = 0 ] || die "need root to install shellcheck"
        say "installing shellcheck"
        apt-get install -y --no-install-recommends shellcheck >/dev/null \
            || { apt-get update >/dev/null && apt-get install -y --no-install-recommends shellcheck >/dev/null; } \
            || die "cannot install shellcheck"
    fi
fi
