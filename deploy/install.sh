#!/usr/bin/env bash
# Installs agent-guard as a service (or removes it). Idempotent: run it again to upgrade.
#
#   deploy/install.sh                 build (deploy/setup-build.sh, cargo build --release),
#                                     install, create the agent-guard group, enable and start
#   deploy/install.sh --no-build      install target/release/agent-guard as it is
#   deploy/install.sh --binary PATH   install PATH (implies --no-build)
#   deploy/install.sh --uninstall     stop, remove pinned kernel state, remove what was
#                                     installed (edited config and policies are kept)
#   deploy/install.sh --uninstall --purge   ... and /etc/agent-guard, /var/log/agent-guard
#
# What goes where (PREFIX /usr/local; /usr when DESTDIR is set):
#   PREFIX/bin/agent-guard
#   UNITDIR/agent-guard.service         /etc/systemd/system (/lib/systemd/system when PREFIX=/usr)
#   /etc/agent-guard/config.toml        only if absent: an existing config is never overwritten
#   /etc/agent-guard/policies.d/*.toml  the examples of deploy/policies, only if absent (or
#                                       unmodified since an earlier install: then upgraded)
#   /var/lib/agent-guard/install-manifest   what was installed, for --uninstall
#
# DESTDIR=/some/root stages everything below that root (packaging, tests): no group is
# created, systemctl is not run and nothing is started; the manifest records what a real
# install would do. Where systemd is PID 1 the service is enabled and (re)started; elsewhere
# (containers, CI VMs) the daemon is started directly in the background and the script says so.
#
# Environment: DESTDIR, PREFIX, UNITDIR, CONTROL_GROUP (default agent-guard).
set -euo pipefail

say() { echo "install.sh: $*" >&2; }
die() { echo "install.sh: error: $*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DESTDIR="${DESTDIR:-}"
DESTDIR="${DESTDIR%/}"
if [ -n "$DESTDIR" ]; then
    PREFIX="${PREFIX:-/usr}"
else
    PREFIX="${PREFIX:-/usr/local}"
fi
if [ -z "${UNITDIR:-}" ]; then
    if [ "$PREFIX" = /usr ]; then UNITDIR=/lib/systemd/system; else UNITDIR=/etc/systemd/system; fi
fi
CONTROL_GROUP="${CONTROL_GROUP:-agent-guard}"
ETC=/etc/agent-guard
CONFIG="$ETC/config.toml"
BIN="$PREFIX/bin/agent-guard"
UNIT="$UNITDIR/agent-guard.service"
MANIFEST=/var/lib/agent-guard/install-manifest
LOGDIR=/var/log/agent-guard
RUNDIR=/run/agent-guard
PIDFILE="$RUNDIR/daemon.pid"

mode=install build=1 binary="" purge=0
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary="$2"; build=0; shift ;;
        --binary=*) binary="${1#--binary=}"; build=0 ;;
        --uninstall) mode=uninstall ;;
        --purge) purge=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
[ "$purge" = 0 ] || [ "$mode" = uninstall ] || die "--purge goes with --uninstall"
case "$PREFIX$UNITDIR" in *' '*) die "PREFIX and UNITDIR must not contain spaces" ;; esac
[ -n "$DESTDIR" ] || [ "$(id -u)" = 0 ] || die "run as root (or set DESTDIR=... to stage into a directory)"

# Where systemd manages services (sd_booted(3)); never when staging.
systemd_running() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

# Manifest lines: "file SHA256 PATH" (PATH without DESTDIR) and "group NAME" (created by us),
# "would ..." for what a DESTDIR install left to the real one.
declare -A recorded=()
group_ours=0
read_manifest() {
    local kind a b
    [ -f "$DESTDIR$MANIFEST" ] || return 0
    while read -r kind a b; do
        case "$kind" in
            file) recorded["$b"]="$a" ;;
            group) [ "$a" = "$CONTROL_GROUP" ] && group_ours=1 ;;
        esac
    done < "$DESTDIR$MANIFEST"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# Copies SRC to DEST (below DESTDIR) atomically with MODE: a running binary is replaced, not
# overwritten in place.
put() {
    local src="$1" dest="$DESTDIR$2" mode="$3" tmp
    mkdir -p "$(dirname "$dest")"
    tmp="$(mktemp "$dest.XXXXXX")"
    cat "$src" > "$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dest"
}

new_manifest=()
record() { new_manifest+=("$*"); }

# A file the admin owns once installed (config, policies): installed when absent, upgraded
# when unmodified since we installed it, otherwise kept.
put_conffile() {
    local src="$1" path="$2" dest="$DESTDIR$2" have
    if [ ! -e "$dest" ]; then
        put "$src" "$path" 0644
        say "installed $path"
    else
        have="$(sha "$dest")"
        if [ "$have" = "$(sha "$src")" ]; then
            say "$path is up to date"
        elif [ "${recorded[$path]:-}" = "$have" ]; then
            put "$src" "$path" 0644
            say "upgraded $path (it was unmodified)"
        else
            say "kept $path (it exists and differs from $src: merge new settings by hand)"
            return 0
        fi
    fi
    record file "$(sha "$dest")" "$path"
}

write_manifest() {
    mkdir -p "$(dirname "$DESTDIR$MANIFEST")"
    {
        echo "# agent-guard install manifest (deploy/install.sh); --uninstall reads it"
        printf '%s\n' "${new_manifest[@]}"
    } > "$DESTDIR$MANIFEST.tmp"
    mv -f "$DESTDIR$MANIFEST.tmp" "$DESTDIR$MANIFEST"
}

# The pid of the daemon answering on the installed config's socket, if any.
daemon_pid() {
    [ -x "$DESTDIR$BIN" ] || return 0
    { "$DESTDIR$BIN" --config "$CONFIG" status 2>/dev/null || true; } | sed -n 's/.* daemon running, pid \([0-9]*\),.*/\1/p'
}

# Stops a daemon this script started directly (pid file), and waits for it to exit.
stop_direct() {
    local pid
    [ -f "$PIDFILE" ] || return 0
    pid="$(cat "$PIDFILE")"
    if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "agent-guard.* daemon"; then
        say "stopping the daemon started by install.sh (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 1 300); do
            [ -d "/proc/$pid" ] || break
            sleep 0.1
        done
        [ ! -d "/proc/$pid" ] || die "the daemon (pid $pid) did not stop within 30 s"
    fi
    rm -f "$PIDFILE"
}

wait_ready() {
    for _ in $(seq 1 600); do
        if "$BIN" --config "$CONFIG" status >/dev/null 2>&1; then
            return 0
        fi
        if [ -n "${1:-}" ] && [ ! -d "/proc/$1" ]; then
            break
        fi
        sleep 0.1
    done
    return 1
}

install_all() {
    local src out
    if [ "$build" = 1 ]; then
        say "building (deploy/setup-build.sh, then cargo build --release -p agent-guard)"
        AG_SETUP_QUIET=1 "$ROOT/deploy/setup-build.sh"
        export PATH="$HOME/.cargo/bin:$PATH"
        (cd "$ROOT" && cargo build --release -p agent-guard)
    fi
    src="${binary:-$ROOT/target/release/agent-guard}"
    [ -f "$src" ] || die "$src does not exist (build it: cargo build --release -p agent-guard, or drop --no-build)"
    "$src" --version >/dev/null 2>&1 || die "$src does not run ($src --version failed)"

    read_manifest
    put "$src" "$BIN" 0755
    say "installed $BIN ($("$src" --version))"
    record file "$(sha "$DESTDIR$BIN")" "$BIN"

    mkdir -p "$(dirname "$DESTDIR$UNIT")"
    sed "s|^ExecStart=/usr/bin/agent-guard |ExecStart=$BIN |" "$ROOT/deploy/agent-guard.service" > "$DESTDIR$UNIT.tmp"
    grep -q "^ExecStart=$BIN " "$DESTDIR$UNIT.tmp" || die "deploy/agent-guard.service has no ExecStart=/usr/bin/agent-guard line to rewrite"
    chmod 0644 "$DESTDIR$UNIT.tmp"
    mv -f "$DESTDIR$UNIT.tmp" "$DESTDIR$UNIT"
    say "installed $UNIT"
    record file "$(sha "$DESTDIR$UNIT")" "$UNIT"

    put_conffile "$ROOT/deploy/config.toml" "$CONFIG"
    mkdir -p "$DESTDIR$ETC/policies.d"
    for p in "$ROOT"/deploy/policies/*.toml; do
        out="$("$src" policy check "$p" 2>&1)" || die "$p does not pass agent-guard policy check: $out"
        put_conffile "$p" "$ETC/policies.d/$(basename "$p")"
    done
    mkdir -p "$DESTDIR$LOGDIR"
    chmod 0750 "$DESTDIR$LOGDIR"

    if [ -n "$DESTDIR" ]; then
        record would create group "$CONTROL_GROUP"
        if [ "$UNITDIR" = /etc/systemd/system ] || [ "$UNITDIR" = /lib/systemd/system ]; then
            record would enable agent-guard.service
        fi
        write_manifest
        say "DESTDIR=$DESTDIR: staged only. Not done (a real install or the package does it):" \
            "create group $CONTROL_GROUP, systemctl enable --now agent-guard.service"
        return 0
    fi

    if getent group "$CONTROL_GROUP" >/dev/null; then
        say "group $CONTROL_GROUP exists"
        [ "$group_ours" = 0 ] || record group "$CONTROL_GROUP"
    else
        groupadd --system "$CONTROL_GROUP"
        say "created group $CONTROL_GROUP (members may use the control socket: usermod -aG $CONTROL_GROUP USER)"
        record group "$CONTROL_GROUP"
    fi
    write_manifest

    if systemd_running; then
        systemctl daemon-reload
        systemctl enable agent-guard.service
        if systemctl is-active --quiet agent-guard.service; then
            say "restarting agent-guard.service (the new daemon adopts the pinned state)"
            systemctl restart agent-guard.service
        else
            systemctl start agent-guard.service
        fi
        systemctl is-active --quiet agent-guard.service || die "agent-guard.service did not start: journalctl -u agent-guard"
        say "agent-guard.service enabled and running: systemctl status agent-guard; agent-guard status"
        return 0
    fi

    say "systemd is not running here (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown)):" \
        "starting the daemon directly; it will not be restarted if it dies, nor started at boot"
    local running pid
    running="$(daemon_pid)"
    if [ -n "$running" ]; then
        if [ -f "$PIDFILE" ] && [ "$(cat "$PIDFILE")" = "$running" ]; then
            stop_direct # upgrade: the new binary adopts the pinned state
        else
            say "a daemon is already answering for $CONFIG (pid $running), not started by install.sh: left alone"
            return 0
        fi
    fi
    mkdir -p "$RUNDIR" "$LOGDIR"
    # Its own session: no terminal signals reach it once this script is done.
    setsid "$BIN" --config "$CONFIG" daemon </dev/null >>"$LOGDIR/daemon.log" 2>&1 &
    pid=$!
    echo "$pid" > "$PIDFILE"
    if ! wait_ready "$pid"; then
        tail -n 20 "$LOGDIR/daemon.log" >&2 || true
        die "the daemon did not become ready (log: $LOGDIR/daemon.log)"
    fi
    say "daemon running (pid $pid, log $LOGDIR/daemon.log, pid file $PIDFILE); stop it with: deploy/install.sh --uninstall, or kill $pid"
}

uninstall_all() {
    read_manifest
    local installed=0 path kept=()
    [ -f "$DESTDIR$MANIFEST" ] || [ -e "$DESTDIR$BIN" ] || [ -e "$DESTDIR$UNIT" ] || [ -e "$DESTDIR$ETC" ] || {
        say "nothing to uninstall (no $DESTDIR$MANIFEST, $DESTDIR$BIN, $DESTDIR$UNIT or $DESTDIR$ETC)"
        return 0
    }

    if [ -z "$DESTDIR" ]; then
        if systemd_running && systemctl cat agent-guard.service >/dev/null 2>&1; then
            say "stopping and disabling agent-guard.service"
            systemctl disable --now agent-guard.service
        fi
        stop_direct
        if [ -x "$BIN" ]; then
            local running
            running="$(daemon_pid)"
            [ -z "$running" ] || die "a daemon still answers for $CONFIG (pid $running), not started by this script: stop it first"
            say "removing pinned kernel state ($BIN daemon --uninstall)"
            "$BIN" --config "$CONFIG" daemon --uninstall || die "$BIN daemon --uninstall failed (see above); nothing else was removed"
        elif [ -f "$MANIFEST" ]; then
            say "$BIN is gone: cannot remove pinned state under /sys/fs/bpf (agent-guard daemon --uninstall does)"
        fi
    fi

    # Binary and unit always go; config and policies only when unmodified (or with --purge).
    for path in "$BIN" "$UNIT"; do
        if [ -e "$DESTDIR$path" ]; then rm -f "$DESTDIR$path"; say "removed $path"; installed=1; fi
    done
    local files=("$CONFIG")
    for p in "$ROOT"/deploy/policies/*.toml; do files+=("$ETC/policies.d/$(basename "$p")"); done
    for path in "${!recorded[@]}"; do
        case "$path" in "$ETC"/*) files+=("$path") ;; esac
    done
    for path in $(printf '%s\n' "${files[@]}" | sort -u); do
        [ -e "$DESTDIR$path" ] || continue
        local have shipped=""
        have="$(sha "$DESTDIR$path")"
        case "$path" in
            "$CONFIG") shipped="$(sha "$ROOT/deploy/config.toml")" ;;
            "$ETC"/policies.d/*) [ ! -f "$ROOT/deploy/policies/$(basename "$path")" ] || shipped="$(sha "$ROOT/deploy/policies/$(basename "$path")")" ;;
        esac
        if [ "$purge" = 1 ] || [ "${recorded[$path]:-}" = "$have" ] || [ "$shipped" = "$have" ]; then
            rm -f "$DESTDIR$path"
            say "removed $path"
        else
            kept+=("$path")
        fi
    done
    if [ "$purge" = 1 ]; then
        rm -rf -- "$DESTDIR$ETC" "$DESTDIR$LOGDIR"
        say "purged $ETC and $LOGDIR"
    fi
    rm -f "$DESTDIR$MANIFEST"
    rmdir "$DESTDIR$ETC/policies.d" "$DESTDIR$ETC" "$DESTDIR$(dirname "$MANIFEST")" 2>/dev/null || true
    [ -n "$DESTDIR" ] || rmdir "$LOGDIR" 2>/dev/null || true

    if [ -z "$DESTDIR" ]; then
        systemd_running && systemctl daemon-reload
        if [ "$group_ours" = 1 ] && getent group "$CONTROL_GROUP" >/dev/null; then
            groupdel "$CONTROL_GROUP"
            say "removed group $CONTROL_GROUP"
        fi
    fi
    [ "${#kept[@]}" = 0 ] || say "kept (modified locally; --purge removes them): ${kept[*]}"
    [ "$installed" = 1 ] || say "binary and unit were not installed"
    say "uninstalled"
}

case "$mode" in
    install) install_all ;;
    uninstall) uninstall_all ;;
esac
