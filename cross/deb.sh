#!/usr/bin/env bash
# Packages one cross-built agent as a Debian package, the way edge boards are
# usually provisioned: binary, systemd unit, example config (a conffile) and
# the documented state directory layout.
#
#   cross/deb.sh TARGET BINARY OUTDIR
#
# TARGET is one of cross/build.sh's targets (aarch64-musl, aarch64-gnu,
# armv7, aarch64-gpu). Builds with dpkg-deb only; prints the package path.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 3 ] || { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
target="$1" binary="$2" out="$3"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
package=convoy-agent
depends=""
case "$target" in
  aarch64-musl) arch=arm64 ;;
  aarch64-gnu) arch=arm64; depends="libc6 (>= 2.28)" ;;
  armv7) arch=armhf; depends="libc6 (>= 2.28)" ;;
  aarch64-gpu) arch=arm64; package=convoy-agent-gpu; depends="libc6 (>= 2.28), libvulkan1" ;;
  *) echo "cross/deb.sh: unknown target $target" >&2; exit 2 ;;
esac

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"
install -D -m 0755 "$binary" "$root/usr/bin/convoy-agent"
install -D -m 0644 systemd/convoy-agent.service "$root/lib/systemd/system/convoy-agent.service"
install -D -m 0644 systemd/agent.example.toml "$root/etc/convoy-agent/agent.toml"
install -D -m 0644 systemd/agent.example.toml "$root/usr/share/doc/$package/agent.example.toml"
install -D -m 0644 README.md "$root/usr/share/doc/$package/README.md"
if [ "$target" = aarch64-gpu ]; then
  install -D -m 0644 systemd/convoy-agent-gpu.conf \
    "$root/lib/systemd/system/convoy-agent.service.d/gpu.conf"
fi
relations=""
if [ "$package" = convoy-agent-gpu ]; then
  relations=$'Provides: convoy-agent\nConflicts: convoy-agent\nReplaces: convoy-agent\n'
fi
suffix=""
if [ "$target" = aarch64-musl ]; then suffix="-static"; fi
# State lives in /var/lib/convoy-agent, which systemd creates on first start
# (StateDirectory= with DynamicUser=, so it belongs to the service alone).
mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: $package
Version: $version
Architecture: $arch
Maintainer: convoy maintainers <convoy@localhost>
Section: misc
Priority: optional
${depends:+Depends: $depends
}${relations}Installed-Size: $(du -sk "$root" | cut -f1)
Homepage: https://github.com/convoy-fl/convoy
Description: convoy vehicle agent (federated training over MQTT)
 Trains a compact model on the data this vehicle collected, compresses the
 update and syncs it over MQTT; survives bad links, reboots and power loss.
 Set client_id, broker and data in /etc/convoy-agent/agent.toml, then
 systemctl enable --now convoy-agent.
CONTROL
sed -i '/^$/d' "$root/DEBIAN/control"
echo /etc/convoy-agent/agent.toml > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  # Restart a running agent onto the new binary; a fresh install waits for
  # its identity to be configured.
  if systemctl is-active --quiet convoy-agent; then systemctl restart convoy-agent || true; fi
fi
POSTINST
cat > "$root/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl disable --now convoy-agent || true
fi
PRERM
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm"
mkdir -p "$out"
deb="$out/${package}_${version}_${arch}${suffix}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
printf '%s  %s bytes\n' "$deb" "$(stat -c %s "$deb")"
