#!/bin/sh
# Build the hostagent noarch RPM from this git tree, without network.
# Usage: contrib/build-rpm.sh [OUTDIR]      (default: dist/)
# The source tarball holds the files git tracks plus new, not ignored ones,
# as they are in the work tree, so uncommitted edits are built too.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$top/dist}" && cd "${1:-$top/dist}" && pwd)
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$top/hostagent/__init__.py")
spec_version=$(sed -n "s/^Version:[[:space:]]*\([0-9][^[:space:]]*\)\$/\1/p" "$top/hostagent.spec")
if [ "$version" != "$spec_version" ]; then
    echo "build-rpm: hostagent.spec says $spec_version," \
        "hostagent/__init__.py says $version" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/hostagent-rpm.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/SOURCES"
cd "$top"
git ls-files -z --cached --others --exclude-standard \
    | tar --null --files-from=- --ignore-failed-read --warning=no-failed-read \
        --sort=name --owner=0 --group=0 --numeric-owner \
        --transform "s,^,hostagent-$version/," \
        -czf "$work/SOURCES/hostagent-$version.tar.gz"

# On a host whose rpm database does not know the build requirements (any
# Debian), rpmbuild's dependency check can only fail.
nodeps=""
rpm -q --quiet rpm 2>/dev/null || nodeps="--nodeps"
rpmbuild -bb $nodeps \
    --define "_topdir $work" \
    --define "_rpmdir $out" \
    --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    "$top/hostagent.spec" > "$work/rpmbuild.log" 2>&1 || {
    cat "$work/rpmbuild.log" >&2
    exit 1
}
ls "$out"/hostagent-"$version"-*.noarch.rpm
