#!/usr/bin/env bash
# Builds packaging/out/chat-backend_<version>_amd64.deb (`make deb`) and checks it with lintian.
#
# dpkg-buildpackage wants debian/ at the top of a source tree and writes its results next to
# that tree, so the repository (what git does not ignore) is copied to a fixed directory,
# /var/tmp/chat-backend-deb/src, with packaging/debian as its debian/, built there, and the results
# moved to packaging/out. The path is fixed so that the build does not depend on where the repository
# is: the compilers record the source and build paths (debug information, the names of the clang
# module cache's directories), and two builds of one commit must give the same package. The copy
# is updated in place (rsync); SwiftPM's package checkouts and incremental build state are kept
# between runs in /var/tmp/chat-backend-deb/build. Two package builds cannot run at once.
set -euo pipefail
cd "$(dirname "$0")/.."

# CHAT_DEB_OUT puts the results elsewhere (make check-reproducible builds a second time there).
OUT=${CHAT_DEB_OUT:-packaging/out}
ROOT=${CHAT_DEB_BUILD_ROOT:-/var/tmp/chat-backend-deb}
SRC=$ROOT/src
export SCRATCH=$ROOT/build

upstream=$(sed -n 's/^ *public static let current = "\(.*\)"$/\1/p' Sources/Service/ServiceConfig.swift)
version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
if [ "${version%-*}" != "$upstream" ]; then
  echo "packaging/debian/changelog is at $version, but ChatBackendVersion.current is $upstream:" >&2
  echo "add a changelog entry first: dch -c packaging/debian/changelog -v $upstream-1" >&2
  exit 1
fi
arch=$(dpkg-architecture -qDEB_HOST_ARCH)

mkdir -p "$SRC" "$OUT"
# .gitignore'd files (.build*, data, packaging/out, ...) are neither copied nor deleted from the
# copy.
rsync -a --delete --filter=':- .gitignore' --exclude=/.git --exclude=/debian ./ "$SRC/"
rsync -a --delete packaging/debian/ "$SRC/debian/"
rm -f "$OUT"/chat-backend_"$version"_* "$OUT"/chat-backend-dbgsym_"$version"_* "$ROOT"/chat-backend*_"$version"_*

(cd "$SRC" && dpkg-buildpackage --build=binary --no-sign)
mv "$ROOT"/chat-backend*_"$version"_* "$OUT"/
# The binary as it was before dh_strip (debug information in it, build id set): what `make
# check-reproducible` compares when two packages differ.
cp "$SRC/debian/build/chat-backend" "$OUT/chat-backend.unstripped"

deb=$OUT/chat-backend_${version}_${arch}.deb
echo "lintian $deb"
lintian --fail-on error,warning --display-info "$deb"

installed=$(dpkg-deb --fsys-tarfile "$deb" | tar -tvf - ./usr/bin/chat-backend | awk '{print $3}')
echo "built $deb: $(stat -c %s "$deb") bytes; /usr/bin/chat-backend installed: $installed bytes"
