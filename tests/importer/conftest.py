"""Fixtures for the importer's tests: the CLI, built images, layouts and real registries."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from image_ancestry.cli import main
from tests.importer.builders import (
    APP_LAYERS,
    BASE_LAYERS,
    Built,
    build_image,
    build_index,
    write_layout,
)
from tests.importer.registries import LocalRegistry

BASE_NAME_ANNOTATION = "org.opencontainers.image.base.name"
BASE_DIGEST_ANNOTATION = "org.opencontainers.image.base.digest"
# What `import oci:LAYOUT` names the images of the `images` fixture's layout.
LAYOUT_NAMES = ["shop-app-1", "shop-base-1", "shop-multi-linux-amd64", "shop-multi-linux-arm64-v8"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def docs(self) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all(self.out) if d is not None]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    def run(*argv: str) -> Result:
        capsys.readouterr()
        try:
            code = main(["import", *argv])
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture(autouse=True)
def no_user_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read the credentials of whoever runs the tests."""
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "no-auth.json"))


@dataclass
class Images:
    base: Built
    app: Built
    multi: Built  # an index: linux/amd64 and linux/arm64/v8 images of the base layers
    layout: Path  # an OCI layout with tags base-1, app-1, multi


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    base = build_image(BASE_LAYERS, labels={"org.opencontainers.image.title": "base"})
    app = build_image(
        APP_LAYERS,
        annotations={
            BASE_NAME_ANNOTATION: "r.example/base:1",
            BASE_DIGEST_ANNOTATION: base.digest,
        },
    )
    amd64 = build_image([*BASE_LAYERS, {"arch": b"amd64"}], arch="amd64")
    arm64 = build_image([*BASE_LAYERS, {"arch": b"arm64"}], arch="arm64", variant="v8")
    multi = build_index(
        [
            (amd64, {"os": "linux", "architecture": "amd64"}),
            (arm64, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
        ]
    )
    layout = write_layout(
        tmp_path_factory.mktemp("layout") / "shop",
        {"base-1": base, "app-1": app, "multi": multi},
    )
    return Images(base=base, app=app, multi=multi, layout=layout)


def _registry(
    tmp_path_factory: pytest.TempPathFactory, images: Images, auth: str | None
) -> Iterator[LocalRegistry]:
    registry = LocalRegistry(tmp_path_factory.mktemp(f"registry-{auth or 'anonymous'}"), auth)
    registry.start()
    try:
        registry.copy(images.layout, "base-1", "platform/base")
        registry.copy(images.layout, "app-1", "team/app")
        registry.copy(images.layout, "multi", "platform/multi", all_platforms=True)
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, images: Images) -> Iterator[LocalRegistry]:
    """An anonymous registry on loopback with base-1, app-1 and the multi index."""
    yield from _registry(tmp_path_factory, images, None)


@pytest.fixture(scope="session")
def basic_registry(
    tmp_path_factory: pytest.TempPathFactory, images: Images
) -> Iterator[LocalRegistry]:
    """The same content behind htpasswd basic auth."""
    yield from _registry(tmp_path_factory, images, "htpasswd")


@pytest.fixture(scope="session")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, images: Images
) -> Iterator[LocalRegistry]:
    """The same content behind bearer-token auth (a token service of the tests' own)."""
    yield from _registry(tmp_path_factory, images, "token")
