"""Images -> commands: the node agent has no container runtime, so a container's image only supplies what the
image would run when the pod gives no `command` (the image's ENTRYPOINT) or no `args` (its CMD).

An `ImageMap` is built from `REPOSITORY=COMMAND` entries (`--image-entrypoint`) and from Dockerfiles
(`--image-dockerfile REPOSITORY=PATH`: the last stage's ENTRYPOINT and CMD). A repository matches an image with any
tag or digest (`fedtask-operator` matches `fedtask-operator:0.1.0`); an entry for `repository:tag` wins over one for
the bare repository. Commands are resolved on the pods' PATH (the node agent puts the venv's bin folder first, where
the Dockerfiles' images have /opt/fedtask/bin).
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


class ImageMapError(ValueError):
    """A mapping or Dockerfile cannot be used; the message names it."""


@dataclass(frozen=True)
class ImageCommand:
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()


@dataclass
class ImageMap:
    images: dict[str, ImageCommand] = field(default_factory=dict)

    def add_entrypoint(self, spec: str) -> None:
        """`REPOSITORY=COMMAND ARGS...` (shell-like quoting)."""
        repository, command = _split(spec, "--image-entrypoint")
        argv = shlex.split(command)
        if not argv:
            raise ImageMapError(f"--image-entrypoint {spec!r}: empty command")
        self.images[repository] = ImageCommand(entrypoint=tuple(argv))

    def add_dockerfile(self, spec: str) -> None:
        """`REPOSITORY=PATH`: the ENTRYPOINT and CMD of the Dockerfile's last stage."""
        repository, path = _split(spec, "--image-dockerfile")
        self.images[repository] = read_dockerfile(Path(path))

    def lookup(self, image: str) -> ImageCommand | None:
        if image in self.images:
            return self.images[image]
        return self.images.get(repository_of(image))

    def argv(self, container: dict) -> list[str]:
        """The container's command line as a runtime would build it: command (or ENTRYPOINT) + args (or, with no
        command given, CMD). Raises ImageMapError when the container needs an image this map does not know."""
        command = list(container.get("command") or [])
        args = list(container.get("args") or [])
        if command:
            return command + args
        found = self.lookup(container.get("image", ""))
        if found is None:
            raise ImageMapError(f'image "{container.get("image", "")}": the node agent has no entrypoint for it '
                                f"(map it with --image-entrypoint or --image-dockerfile)")
        return list(found.entrypoint) + (args if args else list(found.cmd))


def repository_of(image: str) -> str:
    """`registry:5000/team/app:1.0@sha256:...` -> `registry:5000/team/app`."""
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        image = image[: len(image) - len(last)] + last.split(":", 1)[0]
    return image


def read_dockerfile(path: Path) -> ImageCommand:
    try:
        text = path.read_text()
    except OSError as err:
        raise ImageMapError(f"{path}: {err.strerror or err}") from err
    # Join continuation lines, drop comments, keep only the last stage (the image that runs).
    lines = [line for line in re.sub(r"\\\n", " ", text).splitlines() if not line.lstrip().startswith("#")]
    stage: list[str] = []
    for line in lines:
        instruction = line.strip().split(None, 1)
        if not instruction:
            continue
        if instruction[0].upper() == "FROM":
            stage = []
        stage.append(line.strip())
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    for line in stage:
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "ENTRYPOINT":
            entrypoint = _exec_form(rest.strip(), path)
        elif keyword.upper() == "CMD":
            cmd = _exec_form(rest.strip(), path)
    # A stage without CMD inherits its base image's, which Docker resets when the stage sets ENTRYPOINT; the base
    # image is not known here, so a stage with neither is refused.
    if not entrypoint and not cmd:
        raise ImageMapError(f"{path}: no ENTRYPOINT or CMD in the last stage")
    return ImageCommand(entrypoint=entrypoint, cmd=cmd)


def _exec_form(value: str, path: Path) -> tuple[str, ...]:
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError as err:
            raise ImageMapError(f"{path}: cannot parse {value!r}: {err}") from err
        if not isinstance(parsed, list) or not all(isinstance(item, str) for item in parsed):
            raise ImageMapError(f"{path}: {value!r} must be a JSON list of strings")
        return tuple(parsed)
    return ("/bin/sh", "-c", value)  # the shell form


def _split(spec: str, option: str) -> tuple[str, str]:
    repository, sep, value = spec.partition("=")
    if not sep or not repository or not value:
        raise ImageMapError(f"{option} {spec!r}: expected REPOSITORY=VALUE")
    return repository, value
