"""Node profiles: how the broker is installed on a node, and so where its files go and how
it picks them up (docs/coreflux-interface.md §4, *Install profiles*).

A profile is one small object that gives a node's defaults: the TLS directory lotdeploy
writes, its own release directory, the reload command, and the TLS directory *as the broker
sees it* (inside a container that is another path than on the host). Explicit `broker`
settings (`tls_dir`, `release_dir`, `reload_command`) still win. Everything else (the deploy
script, drift, rollback, the confirm timer, the Ansible transport) only reads the resolved
values, so no module outside this one asks which profile a node has.

Pure and stdlib-only (with `protocol`): the spec, the model and the lab use it alike.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass
from typing import Literal

from lotdeploy import protocol

ProfileName = Literal["systemd", "docker"]
PROFILES: tuple[ProfileName, ...] = ("systemd", "docker")
DEFAULT_PROFILE: ProfileName = "systemd"

#: Vendor: the official image mounts its project volume at this path in the container.
DOCKER_PROJECT_DIR = "/etc/project"
#: OUR default for the volume's directory on the host: the vendor names none (a setting).
DOCKER_VOLUME_DIR = "/srv/coreflux/project"
#: OUR default container name: the vendor's examples differ (a setting).
DOCKER_CONTAINER = "coreflux"
#: Below the volume: the broker's TLS files and lotdeploy's releases (our layout).
DOCKER_TLS_SUBDIR = "tls"
DOCKER_RELEASE_SUBDIR = "lotdeploy"

DockerReload = Literal["restart"]
DOCKER_RELOADS: tuple[DockerReload, ...] = ("restart",)


@dataclass(frozen=True)
class DockerLayout:
    """A docker node's settings (`docker:` in the spec), defaults filled in."""

    volume_dir: str = DOCKER_VOLUME_DIR
    project_dir: str = DOCKER_PROJECT_DIR
    container: str = DOCKER_CONTAINER
    reload: DockerReload = "restart"


@dataclass(frozen=True)
class Resolved:
    """What a profile decides for one node (after explicit settings)."""

    tls_dir: str
    release_dir: str
    reload_command: str


def defaults(profile: ProfileName, docker: DockerLayout | None) -> Resolved:
    """The profile's own paths and reload, before any explicit setting."""
    if profile == "docker":
        d = docker or DockerLayout()
        return Resolved(
            posixpath.join(d.volume_dir, DOCKER_TLS_SUBDIR),
            posixpath.join(d.volume_dir, DOCKER_RELEASE_SUBDIR),
            reload_command(d),
        )
    return Resolved(
        protocol.DEFAULT_TLS_DIR, protocol.DEFAULT_RELEASE_DIR, protocol.DEFAULT_RELOAD_COMMAND
    )


def resolve(
    profile: ProfileName,
    docker: DockerLayout | None,
    *,
    tls_dir: str | None = None,
    release_dir: str | None = None,
    reload_command: str | None = None,
) -> Resolved:
    """The node's paths and reload: each explicit setting, else the profile's default."""
    base = defaults(profile, docker)
    return Resolved(
        tls_dir if tls_dir is not None else base.tls_dir,
        release_dir if release_dir is not None else base.release_dir,
        reload_command if reload_command is not None else base.reload_command,
    )


def reload_command(docker: DockerLayout) -> str:
    """The reload contract of a docker node: the container restarts (the broker reads its
    TLS files at start; no public source documents a re-read without one)."""
    return f"docker restart {shlex.quote(docker.container)}"


def inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def broker_path(docker: DockerLayout | None, host_path: str) -> str | None:
    """Where the broker sees `host_path`: the same path on a host install; inside the
    container, its place below the project directory (None: outside the volume, so the
    container cannot see it at all)."""
    if docker is None:
        return host_path
    if not inside(host_path, docker.volume_dir):
        return None
    rest = host_path[len(docker.volume_dir) :].lstrip("/")
    return posixpath.join(docker.project_dir, rest) if rest else docker.project_dir
