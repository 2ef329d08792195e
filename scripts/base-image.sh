#!/usr/bin/env bash
# Build the offline base image (Debian bookworm, minbase + bash, git, python3)
# with debootstrap and `docker import`, for machines that reach no container
# registry. Where a registry is reachable, `debian:bookworm` + the Dockerfiles'
# BASE_IMAGE argument do the same job.
set -euo pipefail
image="${1:-cwm-base:bookworm}"
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "base image $image: present"
  exit 0
fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
echo "base image $image: debootstrap bookworm (a few minutes)"
debootstrap --variant=minbase --include=bash,git,python3,ca-certificates,procps \
  bookworm "$root" http://deb.debian.org/debian >/dev/null
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["bash"]' - "$image" >/dev/null
echo "base image $image: built"
