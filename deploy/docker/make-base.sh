#!/bin/sh
# Builds the base image the Dockerfiles' FROM names, from Debian's own packages, where no registry
# can be reached (this project's CI machines): debootstrap bookworm with Python 3.11 and venv, then
# `podman import` under the tag docker.io/library/python:3.11-slim-bookworm. Where the registry is
# reachable, the real image of that tag serves as well: the Dockerfile uses only `python3`, its
# `venv` module and apt, which both have.
#
# Cached twice: the root file system's tarball under build/ (debootstrap takes minutes; a clean
# clone rebuilds it), and the image in podman's storage (nothing to do when it is there).
# Runs as root (debootstrap and rootful podman). Usage: deploy/docker/make-base.sh
set -eu

TAG=${BASE_TAG:-docker.io/library/python:3.11-slim-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${BASE_CACHE:-$ROOT/build/container-base}
TARBALL=$CACHE/python-3.11-slim-bookworm.tar
: "${CONTAINERS_CONF:=$HERE/containers.conf}"
export CONTAINERS_CONF

if podman image exists "$TAG"; then
    echo "make-base: $TAG is in podman's storage"
    exit 0
fi

if [ ! -s "$TARBALL" ]; then
    mkdir -p "$CACHE"
    work=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    # debootstrap can leave the target's /proc mounted and busy (seen here): detach it (lazy
    # unmount) before the tarball and before removing the folder.
    unmount() { for m in proc sys dev/pts; do umount -l "$work/rootfs/$m" 2>/dev/null || true; done; }
    trap 'unmount; rm -rf "$work"' EXIT
    # minbase: apt and the essentials only, as the slim images; python3-venv brings ensurepip's
    # wheels, so `python3 -m venv` gives a venv with pip as the official image's python does.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$work/rootfs" "$MIRROR"
    unmount
    # Slim as the official image: no package lists, caches or docs. The sources stay, so the
    # Dockerfile's apt-get update works.
    rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin \
        "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/usr/share/doc/"* \
        "$work/rootfs/usr/share/man/"* "$work/rootfs/usr/share/info/"*
    tar --numeric-owner --one-file-system -C "$work/rootfs" -cf "$TARBALL.part" .
    mv "$TARBALL.part" "$TARBALL"
fi

podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap bookworm minbase + python3, python3-venv (deploy/docker/make-base.sh)" \
    "$TARBALL" "$TAG"
echo "make-base: imported $TAG from $TARBALL"
