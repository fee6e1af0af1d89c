#!/bin/sh
# Install Cyrus IMAP and Courier-IMAP for the test kit beside Dovecot (Debian 12, as root).
#
#   sh testkit/install-servers.sh [DIR]        (make deps runs it with DIR=.servers)
#
# cyrus-imapd and courier-imap both conflict with dovecot-imapd (all three provide imap-server),
# so installing them removes Dovecot's imapd. Instead: their dependencies are installed as usual
# (--no-install-recommends), and the two packages themselves are only downloaded and unpacked
# into DIR with `dpkg-deb -x`: the tests run DIR/usr/lib/cyrus/bin/imapd,
# DIR/usr/lib/courier/courier/imaplogin and DIR/usr/bin/imapd. Nothing of Dovecot is touched:
# the script stops before installing if apt would remove any package.
#
# Quick when already done: DIR/.installed records the unpacked versions; if it is there, the
# binaries are there and every dependency is installed, nothing else runs.
#
# System changes besides the packages: on a machine whose init is systemd, the cyrus-imapd
# service that cyrus-common enables is disabled and stopped (without the cyrus-imapd package it
# has no imapd and would only hold ports 143/110/4190). /etc/courier is not changed: the test
# kit runs Courier's authdaemond in a private mount namespace with its own /etc/courier.
set -eu

DIR=${1:-.servers}
DEPS="cyrus-common sasl2-bin courier-base courier-authlib courier-authdaemon courier-authlib-userdb"
PKGS="cyrus-imapd courier-imap"
MARKER="$DIR/.installed"
BINARIES="$DIR/usr/lib/cyrus/bin/imapd $DIR/usr/lib/courier/courier/imaplogin $DIR/usr/bin/imapd"

deps_installed() {
    # shellcheck disable=SC2086
    status=$(dpkg-query -W -f='${Status}\n' $DEPS 2>/dev/null) || return 1
    [ "$(printf '%s\n' "$status" | grep -c '^install ok installed$')" -eq "$(echo $DEPS | wc -w)" ]
}

binaries_present() {
    for b in $BINARIES; do [ -x "$b" ] || return 1; done
}

if [ -f "$MARKER" ] && binaries_present && deps_installed; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-servers: must run as root to install $DEPS" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq

if ! deps_installed; then
    # shellcheck disable=SC2086
    removals=$(apt-get install -s --no-install-recommends $DEPS | grep '^Remv' || true)
    if [ -n "$removals" ]; then
        echo "install-servers: refusing, apt would remove packages:" >&2
        echo "$removals" >&2
        exit 1
    fi
    echo "installing Debian packages: $DEPS"
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $DEPS >/dev/null
    if [ -d /run/systemd/system ] && systemctl is-enabled --quiet cyrus-imapd.service 2>/dev/null
    then
        systemctl disable --now cyrus-imapd.service || true
    fi
fi

echo "unpacking $PKGS into $DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 0755 "$tmp"
chown _apt "$tmp" 2>/dev/null || true # apt downloads as _apt when it can write there
# shellcheck disable=SC2086
(cd "$tmp" && apt-get download -qq $PKGS)
rm -rf "$DIR"
mkdir -p "$DIR"
for deb in "$tmp"/*.deb; do
    dpkg-deb -x "$deb" "$DIR"
    dpkg-deb -f "$deb" Package Version | paste -sd ' ' >>"$tmp/versions"
done
binaries_present || { echo "install-servers: binaries missing after unpacking" >&2; exit 1; }
mv "$tmp/versions" "$MARKER"
cat "$MARKER"
