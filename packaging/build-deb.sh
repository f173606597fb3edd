#!/usr/bin/env bash
# Builds packaging/out/chat-backend_<version>_amd64.deb (`make deb`) and checks it with lintian.
#
# dpkg-buildpackage wants debian/ at the top of a source tree and writes its results next to
# that tree, so the repository (what git does not ignore) is copied to packaging/out/src with
# packaging/debian as its debian/, and built there. The copy is updated in place (rsync); SwiftPM's
# package checkouts and incremental build state are kept between runs in /var/tmp/chat-backend-deb-build.
set -euo pipefail
cd "$(dirname "$0")/.."

# CHAT_DEB_OUT builds elsewhere (make check-reproducible builds a second time there).
OUT=${CHAT_DEB_OUT:-packaging/out}
SRC=$OUT/src

upstream=$(sed -n 's/^ *public static let current = "\(.*\)"$/\1/p' Sources/Service/ServiceConfig.swift)
version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
if [ "${version%-*}" != "$upstream" ]; then
  echo "packaging/debian/changelog is at $version, but ChatBackendVersion.current is $upstream:" >&2
  echo "add a changelog entry first: dch -c packaging/debian/changelog -v $upstream-1" >&2
  exit 1
fi
arch=$(dpkg-architecture -qDEB_HOST_ARCH)

mkdir -p "$SRC"
# .gitignore'd files (.build*, data, packaging/out, ...) are neither copied nor deleted from the
# copy.
rsync -a --delete --filter=':- .gitignore' --exclude=/.git --exclude=/debian ./ "$SRC/"
rsync -a --delete packaging/debian/ "$SRC/debian/"
rm -f "$OUT"/chat-backend_"$version"_* "$OUT"/chat-backend-dbgsym_"$version"_*

(cd "$SRC" && dpkg-buildpackage --build=binary --no-sign)

deb=$OUT/chat-backend_${version}_${arch}.deb
echo "lintian $deb"
lintian --fail-on error,warning --display-info "$deb"

installed=$(dpkg-deb --fsys-tarfile "$deb" | tar -tvf - ./usr/bin/chat-backend | awk '{print $3}')
echo "built $deb: $(stat -c %s "$deb") bytes; /usr/bin/chat-backend installed: $installed bytes"
