"""Debian root filesystems made with mmdebstrap, cached as tarballs by what goes into them.

The deployment tests cannot pull images from a registry, so the hosts and the stand-ins for
third-party images are built from Debian's packages. A tarball is rebuilt only when its
recipe (suite, packages, hooks, the content of copied files) changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.e2e.cache import cache_dir
from tests.e2e.commands import run

MIRROR = "http://deb.debian.org/debian"


def _recipe_key(suite: str, packages: Sequence[str], hooks: Sequence[str], inputs: Sequence[Path]) -> str:
    digest = hashlib.sha256(json.dumps([suite, sorted(packages), list(hooks)]).encode())
    for path in inputs:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(path.parent)).encode())
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:16]


def debian_rootfs(
    name: str,
    packages: Sequence[str],
    *,
    customize_hooks: Sequence[str] = (),
    inputs: Sequence[Path] = (),
    suite: str = "bookworm",
    keep_apt_lists: bool = False,
) -> Path:
    """A minbase root filesystem with PACKAGES, as a tarball; cached.

    customize_hooks: mmdebstrap --customize-hook commands ("$1" is the root folder);
    inputs: files or folders the hooks copy in, so that a change to them rebuilds the tarball;
    keep_apt_lists: keep apt's package lists, as a machine (not an image) has them.
    """
    # Apt's caches are not part of an image, nor its lists (mmdebstrap removes them) unless
    # asked: a host keeps them, or apt, and Ansible's apt module that trusts a recent update,
    # would find no package at all.
    extra = ["--skip=cleanup/apt/lists"] if keep_apt_lists else []
    key = _recipe_key(suite, packages, [*customize_hooks, *extra], inputs)
    tarball = cache_dir("rootfs") / f"{name}-{key}.tar"
    if tarball.exists():
        return tarball
    for stale in tarball.parent.glob(f"{name}-*.tar*"):
        stale.unlink()
    partial = tarball.with_suffix(".tar.partial")
    command = ["mmdebstrap", "--variant=minbase", "--quiet", f"--include={','.join(packages)}", *extra]
    command += [f"--customize-hook={hook}" for hook in customize_hooks]
    command += ['--customize-hook=rm -rf "$1"/var/cache/apt/*.bin']
    command += ["--format=tar", suite, str(partial), MIRROR]
    run(command, timeout=1800)
    partial.rename(tarball)
    return tarball


def import_image(
    tarball: Path,
    tag: str,
    *,
    changes: Sequence[str],
    label: str,
    engine: Sequence[str],
    env: Mapping[str, str] | None = None,
) -> str:
    """`TAG` in the engine (`["docker"]`, `["podman"]`, run with ENV added), made from TARBALL.

    The image carries LABEL = the key of what it was made from (the tarball, whose name holds its
    recipe, and the import's Dockerfile CHANGES); nothing is imported when the engine already
    holds the image of this key. Returns TAG.
    """
    key = hashlib.sha256("\n".join([tarball.name, *changes]).encode()).hexdigest()[:16]
    environ = {**os.environ, **(env or {})}
    inspect = [*engine, "image", "inspect", "--format", f'{{{{ index .Config.Labels "{label}" }}}}', tag]
    if run(inspect, env=environ, check=False, timeout=60).stdout.strip() == key:
        return tag
    all_changes = [*changes, f"LABEL {label}={key}"]
    run(
        [*engine, "import", *(f"--change={c}" for c in all_changes), str(tarball), tag],
        env=environ,
        timeout=900,
    )
    if run(inspect, env=environ, check=False, timeout=60).stdout.strip() != key:
        raise RuntimeError(f"{tag} was imported but does not carry {label}={key}")
    return tag
