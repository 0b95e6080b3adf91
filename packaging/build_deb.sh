#!/bin/sh
# Build dist/iir_<version>_<arch>.deb: the iir wheel and its dependency wheels (so installing
# needs no network), the unit, the env-file template, the install script and maintainer scripts.
#
# Environment:
#   PYTHON            interpreter whose version the wheels target; must match the GPU box's
#                     python3 (Debian 12: 3.11). Default: .venv/bin/python
#   OUT_DIR           where the .deb goes (default dist/)
#   CARGO_TARGET_DIR  Rust build cache (default target/, shared with the development build)
set -eu

HERE="$(cd "$(dirname "$0")" && pwd)"
TOP="$(dirname "$HERE")"
PYTHON="${PYTHON:-$TOP/.venv/bin/python}"
OUT_DIR="${OUT_DIR:-$TOP/dist}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TOP/target}"

fail() { echo "build_deb: error: $*" >&2; exit 1; }
for tool in dpkg-deb dpkg git; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool not found (run packaging/ci-deps.sh)"
done
[ -x "$PYTHON" ] || fail "$PYTHON not found (run make install first)"

VERSION="$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$TOP/pyproject.toml")"
ARCH="$(dpkg --print-architecture)"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT INT TERM
STAGE="$WORK/stage"
SHARE="$STAGE/usr/share/iir"
mkdir -p "$WORK/src" "$WORK/wheels" "$SHARE/wheelhouse" "$STAGE/DEBIAN" \
    "$STAGE/lib/systemd/system" "$STAGE/usr/lib/iir" "$STAGE/usr/share/doc/iir" "$STAGE/usr/bin"

# Build from the tracked sources only: a development tree holds an editable build of
# iir/_native*.so that would collide with the freshly compiled one inside the wheel.
(cd "$TOP" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$WORK/src")
echo "build_deb: building the iir wheel"
if command -v maturin >/dev/null 2>&1; then
    (cd "$WORK/src" && maturin build --release --quiet --out "$WORK/wheels" -i "$PYTHON") >&2
else
    "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/wheels" "$WORK/src" >&2
fi
set -- "$WORK"/wheels/iir-*.whl
[ -f "$1" ] || fail "no iir wheel was built"
echo "build_deb: collecting dependency wheels"
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --only-binary=:all: \
    --wheel-dir "$SHARE/wheelhouse" "$1" >&2

install -m 0644 "$TOP/iir.service" "$STAGE/lib/systemd/system/iir.service"
install -m 0755 "$HERE/iir-install.sh" "$STAGE/usr/lib/iir/iir-install.sh"
install -m 0644 "$HERE/iir.env.template" "$SHARE/iir.env.template"
# forward_logs_udp.pyz: the standard-library-only script as one runnable file for any machine with
# Python 3.8+ (copy it to the machine that receives the logs).
mkdir -p "$WORK/pyz"
cp "$TOP/forward_logs_udp.py" "$WORK/pyz/"
printf 'import sys\n\nfrom forward_logs_udp import main\n\nsys.exit(main())\n' >"$WORK/pyz/__main__.py"
"$PYTHON" -m zipapp "$WORK/pyz" -p "/usr/bin/env python3" -o "$WORK/forward_logs_udp.pyz"
install -m 0755 "$WORK/forward_logs_udp.pyz" "$SHARE/forward_logs_udp.pyz"
install -m 0644 "$TOP/README.md" "$STAGE/usr/share/doc/iir/README.md"
# The documentation pages the README links to, so that its links resolve on the box.
install -d -m 0755 "$STAGE/usr/share/doc/iir/docs"
install -m 0644 "$TOP"/docs/*.md "$TOP"/docs/*.png "$STAGE/usr/share/doc/iir/docs/"
ln -s /opt/iir/venv/bin/iir "$STAGE/usr/bin/iir"
for script in postinst prerm postrm; do
    install -m 0755 "$HERE/debian/$script" "$STAGE/DEBIAN/$script"
done
SIZE="$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)"
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
    "$HERE/debian/control.in" >"$STAGE/DEBIAN/control"
chmod 0644 "$STAGE/DEBIAN/control"

mkdir -p "$OUT_DIR"
DEB="$OUT_DIR/iir_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group --build "$STAGE" "$DEB" >&2
echo "$DEB"
