#!/bin/bash
# AutoChain agent installer for Raspberry Pi OS / Debian / Ubuntu (Jetson) boxes.
#
#   tools/install.sh install   [--from SRC_OR_WHEEL] [--extras camera] [--can can0] [--no-enable]
#   tools/install.sh upgrade   [--from SRC_OR_WHEEL] [--version V] [--force]
#   tools/install.sh rollback
#   tools/install.sh uninstall [--purge]
#   tools/install.sh list
#
# Layout: /opt/autochain/releases/<version>/{venv,libexec,share/systemd,install.md}, with
# /opt/autochain/current and /opt/autochain/previous pointing at releases. Units go to
# /etc/systemd/system, sysusers.d/tmpfiles.d snippets to /usr/lib, the udev rule to
# /etc/udev/rules.d; /etc/autochain/agent.toml is written from docs/agent.example.toml only when
# it does not exist. State (/var/lib/autochain) and config (/etc/autochain) survive uninstall
# unless --purge.
#
# Options:
#   --destdir DIR   stage into DIR (image builds, tests): writes nothing outside DIR and never
#                   runs systemctl, systemd-sysusers, systemd-tmpfiles or udevadm
#   --from PATH     source tree (with pyproject.toml) or wheel to pip-install (default: this tree)
#   --version V     release name (default: the wheel's or pyproject.toml's version)
#   --extras LIST   pip extras, e.g. camera or camera,mdf
#   --python PY     interpreter for the venv (default python3, must be >= 3.11)
#   --skip-venv     stub venv (no pip): for staging tests; the agent will not run from it
#   --force         rebuild a release that already exists
#   --can IFACE     also enable autochain-can@IFACE.service (repeatable)
#   --no-enable     install/upgrade without enabling or (re)starting anything
#   --purge         uninstall: remove /etc/autochain and /var/lib/autochain too
set -euo pipefail

PROG=install.sh
SRC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UNIT=autochain-agent.service

die() { echo "$PROG: $*" >&2; exit 1; }
say() { echo "$PROG: $*"; }
usage() { sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2; }

CMD=${1:-}
[ -n "$CMD" ] || usage
shift
case "$CMD" in install | upgrade | rollback | uninstall | list) ;; -h | --help | help) usage ;; *) usage ;; esac

DESTDIR="" FROM="$SRC_ROOT" VERSION="" EXTRAS="" PY=python3
SKIP_VENV=0 FORCE=0 ENABLE=1 PURGE=0 CAN_IFACES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --destdir) DESTDIR=${2:?--destdir needs a directory}; shift 2 ;;
        --destdir=*) DESTDIR=${1#*=}; shift ;;
        --from) FROM=${2:?--from needs a path}; shift 2 ;;
        --from=*) FROM=${1#*=}; shift ;;
        --version) VERSION=${2:?--version needs a value}; shift 2 ;;
        --extras) EXTRAS=${2:?--extras needs a value}; shift 2 ;;
        --python) PY=${2:?--python needs an interpreter}; shift 2 ;;
        --can) CAN_IFACES+=("${2:?--can needs an interface}"); shift 2 ;;
        --skip-venv) SKIP_VENV=1; shift ;;
        --force) FORCE=1; shift ;;
        --no-enable) ENABLE=0; shift ;;
        --purge) PURGE=1; shift ;;
        -h | --help) usage ;;
        *) die "unknown option: $1 (see $PROG --help)" ;;
    esac
done

if [ -n "$DESTDIR" ]; then
    mkdir -p "$DESTDIR"
    DESTDIR=$(cd "$DESTDIR" && pwd)
    [ "$DESTDIR" != / ] || DESTDIR=""
fi
LIVE=1
[ -z "$DESTDIR" ] || LIVE=0
if [ "$LIVE" = 1 ] && [ "$CMD" != list ] && [ "$(id -u)" != 0 ]; then
    die "run as root (or stage with --destdir DIR)"
fi

OPT=$DESTDIR/opt/autochain
RELEASES=$OPT/releases
ETC=$DESTDIR/etc/autochain
STATE=$DESTDIR/var/lib/autochain
UNITDIR=$DESTDIR/etc/systemd/system
SYSUSERS=$DESTDIR/usr/lib/sysusers.d/autochain.conf
TMPFILES=$DESTDIR/usr/lib/tmpfiles.d/autochain.conf
UDEVRULE=$DESTDIR/etc/udev/rules.d/90-autochain-can.rules
CREDENTIAL_PATH=/run/credentials/$UNIT/mqtt.pass

# systemctl & co. only on a live system, never in DESTDIR mode
live() { if [ "$LIVE" = 1 ]; then "$@"; fi; }
live_quiet() { if [ "$LIVE" = 1 ]; then "$@" 2>/dev/null || true; fi; }

release_of() { # $1: link -> release name it points to ("" if none)
    if [ -L "$1" ]; then basename "$(readlink "$1")"; fi
}

set_link() { # $1: link path, $2: release name; atomic (rename over the old link)
    ln -sfn "releases/$2" "$1.new.$$"
    mv -Tf "$1.new.$$" "$1"
}

detect_version() {
    if [ -n "$VERSION" ]; then echo "$VERSION"; return; fi
    if [ -f "$FROM" ] && [[ $FROM == *.whl ]]; then
        basename "$FROM" | cut -d- -f2
    elif [ -f "$FROM/pyproject.toml" ]; then
        sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$FROM/pyproject.toml" | head -n1
    elif [ -d "$FROM" ] && [ -x "$FROM/bin/python" ]; then
        "$FROM/bin/python" -c 'from importlib.metadata import version; print(version("autochain-agent"))'
    fi
}

check_python() {
    command -v "$PY" >/dev/null || die "$PY not found (apt-get install python3 python3-venv)"
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "Python >= 3.11 is needed ($PY is $("$PY" --version 2>&1))"
    "$PY" -c 'import ensurepip, venv' 2>/dev/null || die "$PY cannot make venvs (apt-get install python3-venv)"
}

make_venv() { # $1: release dir
    local venv=$1/venv spec=$FROM
    if [ "$SKIP_VENV" = 1 ]; then
        mkdir -p "$venv/bin"
        for cmd in acc-agent acc acc-bench acc-sim; do
            printf '#!/bin/sh\necho "%s: stub venv (install.sh --skip-venv)" >&2\nexit 69\n' "$cmd" >"$venv/bin/$cmd"
            chmod 0755 "$venv/bin/$cmd"
        done
        return
    fi
    check_python
    [ -e "$FROM" ] || die "--from $FROM does not exist"
    [ -z "$EXTRAS" ] || spec="${FROM}[$EXTRAS]"
    say "creating $venv and installing $spec (this takes a while on a Pi)"
    "$PY" -m venv "$venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip
    "$venv/bin/python" -m pip install --disable-pip-version-check -q "$spec"
    "$venv/bin/acc-agent" --version >/dev/null
}

build_release() { # $1: version -> releases/$1
    local v=$1 dir=$RELEASES/$1 aside=""
    mkdir -p "$RELEASES"
    if [ -e "$dir" ]; then
        [ "$FORCE" = 1 ] || die "release $v already exists in $RELEASES (use --version V or --force)"
        aside=$RELEASES/.old-$v-$$
        mv "$dir" "$aside"
    fi
    # venvs are not relocatable: build in place, put the old one back on failure
    # shellcheck disable=SC2064  # expand now: the paths are locals
    trap "rm -rf '$dir'; [ -z '$aside' ] || mv '$aside' '$dir'" EXIT
    mkdir -p "$dir/libexec" "$dir/share/systemd"
    make_venv "$dir"
    install -m 0755 "$SRC_ROOT/systemd/autochain-can-up" "$dir/libexec/autochain-can-up"
    for f in autochain-agent.service autochain-can@.service autochain.sysusers autochain.tmpfiles \
        90-autochain-can.rules; do
        install -m 0644 "$SRC_ROOT/systemd/$f" "$dir/share/systemd/$f"
    done
    install -m 0644 "$SRC_ROOT/docs/agent.example.toml" "$dir/share/agent.example.toml"
    if [ -f "$SRC_ROOT/docs/install.md" ]; then install -m 0644 "$SRC_ROOT/docs/install.md" "$dir/install.md"; fi
    printf 'version=%s\nfrom=%s\ninstalled=%s\n' "$v" "$FROM" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$dir/RELEASE"
    trap - EXIT
    [ -z "$aside" ] || rm -rf "$aside"
    say "release $v built in $dir"
}

install_system_files() { # $1: release dir whose share/systemd is installed
    local share=$1/share/systemd
    install -d -m 0755 "$UNITDIR" "$(dirname "$SYSUSERS")" "$(dirname "$TMPFILES")" "$(dirname "$UDEVRULE")"
    install -m 0644 "$share/autochain-agent.service" "$UNITDIR/autochain-agent.service"
    install -m 0644 "$share/autochain-can@.service" "$UNITDIR/autochain-can@.service"
    install -m 0644 "$share/autochain.sysusers" "$SYSUSERS"
    install -m 0644 "$share/autochain.tmpfiles" "$TMPFILES"
    install -m 0644 "$share/90-autochain-can.rules" "$UDEVRULE"
}

link_commands() { # /usr/local/bin/acc{,-agent} -> the current release (left alone if someone else's)
    local cmd link
    install -d -m 0755 "$DESTDIR/usr/local/bin"
    for cmd in acc acc-agent; do
        link=$DESTDIR/usr/local/bin/$cmd
        if [ -e "$link" ] && [[ $(readlink "$link") != /opt/autochain/* ]]; then
            say "keeping $link (not ours)"
            continue
        fi
        ln -sfn "/opt/autochain/current/venv/bin/$cmd" "$link"
    done
}

unlink_commands() {
    local cmd link
    for cmd in acc acc-agent; do
        link=$DESTDIR/usr/local/bin/$cmd
        if [ -L "$link" ] && [[ $(readlink "$link") == /opt/autochain/* ]]; then rm -f "$link"; fi
    done
}

install_config() { # $1: release dir; never overwrites an existing config
    install -d -m 0755 "$ETC"
    if [ -e "$ETC/agent.toml" ]; then
        say "keeping $ETC/agent.toml (new template: $1/share/agent.example.toml)"
    else
        {
            echo "# Written by tools/install.sh from agent.example.toml ($(basename "$1")); edit freely:"
            echo "# upgrades never overwrite this file. Check it with: acc-agent --check-config -c <file>"
            echo "# MQTT password: write it to /etc/autochain/mqtt.pass (root, 0600); the unit hands it to"
            echo "# the agent as a credential: mqtt.password_file = \"$CREDENTIAL_PATH\""
            sed "s#password_file = \"/etc/autochain/mqtt.pass\"#password_file = \"$CREDENTIAL_PATH\"#" \
                "$1/share/agent.example.toml"
        } >"$ETC/agent.toml.new.$$"
        chmod 0640 "$ETC/agent.toml.new.$$"
        mv "$ETC/agent.toml.new.$$" "$ETC/agent.toml"
        say "wrote $ETC/agent.toml: edit it before enabling the agent"
    fi
    if [ ! -e "$ETC/mqtt.pass" ]; then
        (umask 077 && : >"$ETC/mqtt.pass")
    fi
    if [ "$LIVE" = 0 ]; then # what systemd-tmpfiles does on a live system
        install -d -m 0750 "$STATE"
        install -d -m 0700 "$STATE/keys"
    fi
}

activate() { # live only: users, directories, units
    [ "$LIVE" = 1 ] || return 0
    systemd-sysusers "$SYSUSERS"
    systemd-tmpfiles --create "$TMPFILES"
    chgrp autochain "$ETC/agent.toml"
    live_quiet udevadm control --reload
    systemctl daemon-reload
    if [ "$ENABLE" = 1 ]; then
        local iface
        for iface in "${CAN_IFACES[@]}"; do systemctl enable --now "autochain-can@$iface.service"; done
        systemctl enable "$UNIT"
        systemctl restart "$UNIT"
        check_active
    else
        say "not enabled (--no-enable): systemctl enable --now $UNIT"
    fi
}

check_active() {
    local _
    for _ in $(seq 1 30); do
        if systemctl is-active --quiet "$UNIT"; then say "$UNIT is active"; return 0; fi
        if systemctl is-failed --quiet "$UNIT"; then break; fi
        sleep 1
    done
    say "WARNING: $UNIT is not active: journalctl -u $UNIT; '$PROG rollback' returns to the previous release"
}

prune_releases() { # keep current and previous only
    local cur prev d
    cur=$(release_of "$OPT/current")
    prev=$(release_of "$OPT/previous")
    for d in "$RELEASES"/*; do
        [ -d "$d" ] || continue
        case "$(basename "$d")" in "$cur" | "$prev") ;; *) say "removing old release $(basename "$d")"; rm -rf "$d" ;; esac
    done
}

cmd_install() { # $1: install | upgrade
    local v cur
    v=$(detect_version)
    [ -n "$v" ] || die "cannot tell the version of $FROM (use --version V)"
    [[ $v =~ ^[A-Za-z0-9._+-]+$ ]] || die "bad version: $v"
    cur=$(release_of "$OPT/current")
    if [ "$1" = upgrade ] && [ -z "$cur" ]; then die "nothing installed in $OPT: use install"; fi
    if [ "$1" = install ] && [ -n "$cur" ] && [ "$cur" != "$v" ]; then
        die "release $cur is installed: use upgrade"
    fi
    if [ "$1" = install ] && [ "$cur" = "$v" ] && [ "$FORCE" = 0 ] && [ -d "$RELEASES/$v" ]; then
        say "release $v already installed: reinstalling system files only (--force rebuilds the venv)"
    else
        build_release "$v"
    fi
    if [ -n "$cur" ] && [ "$cur" != "$v" ]; then set_link "$OPT/previous" "$cur"; fi
    set_link "$OPT/current" "$v"
    install_system_files "$RELEASES/$v"
    install_config "$RELEASES/$v"
    link_commands
    [ "$1" != upgrade ] || prune_releases
    activate
    cur=$(release_of "$OPT/previous")
    say "$1 done: current -> $v (previous: ${cur:-none})"
}

cmd_rollback() {
    local cur prev
    cur=$(release_of "$OPT/current")
    prev=$(release_of "$OPT/previous")
    if [ -z "$prev" ] || [ ! -d "$RELEASES/$prev" ]; then die "no previous release to roll back to"; fi
    set_link "$OPT/current" "$prev"
    if [ -n "$cur" ] && [ -d "$RELEASES/$cur" ]; then set_link "$OPT/previous" "$cur"; else rm -f "$OPT/previous"; fi
    install_system_files "$RELEASES/$prev"
    if [ "$LIVE" = 1 ]; then
        systemctl daemon-reload
        if systemctl is-enabled --quiet "$UNIT"; then systemctl restart "$UNIT" && check_active; fi
    fi
    say "rolled back: current -> $prev (previous: ${cur:-none})"
}

cmd_uninstall() {
    local f
    if [ "$LIVE" = 1 ]; then
        live_quiet systemctl disable --now "$UNIT"
        for f in "$UNITDIR"/autochain-agent.service.wants/autochain-can@*.service; do
            if [ -e "$f" ] || [ -L "$f" ]; then live_quiet systemctl disable --now "$(basename "$f")"; fi
        done
    fi
    rm -f "$UNITDIR/autochain-agent.service" "$UNITDIR/autochain-can@.service" "$SYSUSERS" "$TMPFILES" "$UDEVRULE"
    rm -rf "$UNITDIR/autochain-agent.service.wants" "$UNITDIR/autochain-agent.service.d"
    rm -rf "$OPT"
    unlink_commands
    if [ "$PURGE" = 1 ]; then
        rm -rf "$ETC" "$STATE"
        say "purged $ETC and $STATE (the autochain user stays: userdel autochain)"
    else
        say "kept $ETC and $STATE (--purge removes them)"
    fi
    live_quiet udevadm control --reload
    live systemctl daemon-reload
    say "uninstalled"
}

cmd_list() {
    local cur prev d mark
    cur=$(release_of "$OPT/current")
    prev=$(release_of "$OPT/previous")
    for d in "$RELEASES"/*; do
        [ -d "$d" ] || continue
        mark=""
        [ "$(basename "$d")" != "$cur" ] || mark=" (current)"
        [ "$(basename "$d")" != "$prev" ] || mark=" (previous)"
        echo "$(basename "$d")$mark"
    done
}

case "$CMD" in
    install | upgrade) cmd_install "$CMD" ;;
    rollback) cmd_rollback ;;
    uninstall) cmd_uninstall ;;
    list) cmd_list ;;
esac
