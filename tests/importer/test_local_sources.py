"""OCI layouts and docker-archive tarballs, built here, read by ``image-ancestry import``."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from image_ancestry import API_VERSION
from image_ancestry.model import ContainerImage
from tests.importer.builders import (
    APP_LAYERS,
    BASE_LAYERS,
    add_member,
    build_image,
    layer_tar,
    sha256,
    write_archive,
    write_layout,
)
from tests.importer.conftest import BASE_NAME_ANNOTATION, LAYOUT_NAMES, Images, Result

Cli = Callable[..., Result]


def by_name(result: Result) -> dict[str, dict]:
    assert result.code == 0, result.err
    return {d["metadata"]["name"]: d for d in result.docs()}


def assert_failed(result: Result, source: str, kind: str, detail: str = "") -> None:
    """Non-zero, nothing on stdout, and one message naming the source and what failed."""
    assert result.code == 1, (result.code, result.out, result.err)
    assert result.out == ""
    assert f"{source}: {kind}: " in result.err, result.err
    assert detail in result.err, result.err


# -- OCI layouts ---------------------------------------------------------------------------


def test_layout_tag(cli: Cli, images: Images) -> None:
    result = cli("--namespace", "platform", f"oci:{images.layout}:base-1")
    (doc,) = result.docs()
    assert doc == {
        "apiVersion": API_VERSION,
        "kind": "ContainerImage",
        "metadata": {"name": "shop-base-1", "namespace": "platform"},
        "spec": {"digest": images.base.digest, "layers": images.base.diff_ids},
    }
    assert result.out.startswith("---\napiVersion: imageancestry.io/v1alpha1\nkind: ContainerImage")
    ContainerImage.from_manifest(doc)


def test_layout_without_tag_imports_every_tagged_image(cli: Cli, images: Images) -> None:
    docs = by_name(cli(f"oci:{images.layout}"))
    assert sorted(docs) == LAYOUT_NAMES
    app = docs["shop-app-1"]
    assert app["spec"]["layers"] == images.app.diff_ids
    # Declared bases are carried over from the manifest's OCI annotations.
    assert app["metadata"]["annotations"] == {
        "imageancestry.io/declared-base-name": "r.example/base:1",
        "imageancestry.io/declared-base-digest": images.base.digest,
    }
    arm = docs["shop-multi-linux-arm64-v8"]
    assert arm["metadata"]["annotations"] == {
        "imageancestry.io/platform": "linux/arm64/v8",
        "imageancestry.io/index-digest": images.multi.digest,
    }
    assert arm["spec"]["digest"] == images.multi.children[1].digest
    assert arm["spec"]["layers"] == images.multi.children[1].diff_ids


def test_layers_manifest_gives_compressed_digests(cli: Cli, images: Images) -> None:
    (doc,) = cli("--layers", "manifest", f"oci:{images.layout}:app-1").docs()
    assert doc["spec"]["layers"] == images.app.layer_digests
    assert doc["spec"]["layers"] != images.app.diff_ids


def test_platform_picks_one_image_of_an_index(cli: Cli, images: Images) -> None:
    result = cli("--platform", "linux/arm64", "--name", "golden", f"oci:{images.layout}:multi")
    (doc,) = result.docs()
    assert doc["metadata"]["name"] == "golden"
    assert doc["spec"]["digest"] == images.multi.children[1].digest
    missing = cli("--platform", "linux/s390x", f"oci:{images.layout}:multi")
    assert_failed(missing, f"oci:{images.layout}:multi", "not found", "linux/amd64, linux/arm64/v8")


def test_full_reference_in_ref_name_becomes_spec_image(cli: Cli, tmp_path: Path) -> None:
    base = build_image(BASE_LAYERS)
    layout = write_layout(tmp_path / "l", {"r.example/team/base:3.1": base})
    (doc,) = cli(f"oci:{layout}").docs()
    assert doc["spec"]["image"] == "r.example/team/base:3.1"
    assert doc["metadata"]["name"] == "base-3-1"


def test_progress_lines_on_stderr_when_not_a_terminal(cli: Cli, images: Images) -> None:
    result = cli(f"oci:{images.layout}:base-1", f"oci:{images.layout}:multi")
    assert result.code == 0
    assert result.err.splitlines() == [
        f"imported 1/2: oci:{images.layout}:base-1 (1 image)",
        f"imported 2/2: oci:{images.layout}:multi (2 images)",
    ]
    quiet = cli("-q", f"oci:{images.layout}:base-1", f"oci:{images.layout}:multi")
    assert quiet.err == "" and quiet.out == result.out


def test_layout_errors(cli: Cli, images: Images, tmp_path: Path) -> None:
    assert_failed(cli(f"oci:{tmp_path}/nope"), f"oci:{tmp_path}/nope", "not found")
    assert_failed(cli(f"oci:{tmp_path}"), f"oci:{tmp_path}", "not an image", "not an OCI layout")
    source = f"oci:{images.layout}:v9"
    assert_failed(cli(source), source, "not found", "its tags: app-1, base-1, multi")


def test_artifact_is_not_an_image(cli: Cli, tmp_path: Path) -> None:
    chart = build_image(BASE_LAYERS, config_media_type="application/vnd.cncf.helm.config.v1+json")
    layout = write_layout(tmp_path / "charts", {"1": chart})
    assert_failed(cli(f"oci:{layout}:1"), f"oci:{layout}:1", "not an image", "helm")


def test_layout_missing_blob(cli: Cli, tmp_path: Path) -> None:
    app = build_image(APP_LAYERS)
    layout = write_layout(tmp_path / "broken", {"1": app})
    (layout / "blobs" / "sha256" / app.layer_digests[2].partition(":")[2]).unlink()
    assert_failed(cli(f"oci:{layout}"), f"oci:{layout}", "invalid", app.layer_digests[2])
    (layout / "blobs" / "sha256" / sha256(app.config).partition(":")[2]).unlink()
    assert_failed(cli(f"oci:{layout}"), f"oci:{layout}", "invalid", "is missing from the layout")


def _rewrite_index(layout: Path, edit: Callable[[dict], None]) -> None:
    index = json.loads((layout / "index.json").read_text())
    edit(index)
    (layout / "index.json").write_text(json.dumps(index))


def test_layout_gigantic_declared_size(cli: Cli, tmp_path: Path) -> None:
    base = build_image(BASE_LAYERS)
    layout = write_layout(tmp_path / "huge", {"1": base})
    _rewrite_index(layout, lambda i: i["manifests"][0].update(size=10**15))
    assert_failed(cli(f"oci:{layout}"), f"oci:{layout}", "invalid", "over the 4194304-byte limit")


def test_layout_digest_that_would_escape_blobs(cli: Cli, tmp_path: Path) -> None:
    base = build_image(BASE_LAYERS)
    layout = write_layout(tmp_path / "escape", {"1": base})
    _rewrite_index(layout, lambda i: i["manifests"][0].update(digest="sha256:../../../etc/passwd"))
    assert_failed(cli(f"oci:{layout}"), f"oci:{layout}", "invalid", "not a valid digest")


def test_layout_blob_that_does_not_match_its_digest(cli: Cli, tmp_path: Path) -> None:
    base = build_image(BASE_LAYERS)
    layout = write_layout(tmp_path / "tampered", {"1": base})
    config = layout / "blobs" / "sha256" / sha256(base.config).partition(":")[2]
    config.write_bytes(base.config.replace(b"amd64", b"arm64"))
    assert_failed(cli(f"oci:{layout}"), f"oci:{layout}", "invalid", "has digest sha256:")


def test_one_bad_source_writes_nothing_for_the_good_ones(cli: Cli, images: Images) -> None:
    good, bad = f"oci:{images.layout}:base-1", "docker-archive:/nonexistent.tar"
    assert_failed(cli(good, bad), bad, "not found")


def test_usage_errors_exit_2(cli: Cli, images: Images) -> None:
    for argv in (
        ["dir:/tmp/x"],
        ["--name", "Not_DNS", f"oci:{images.layout}"],
        ["--name", "x", f"oci:{images.layout}:base-1", f"oci:{images.layout}:app-1"],
        ["--platform", "amd64", f"oci:{images.layout}"],
        ["--insecure", "docker://r.example/app:1"],
    ):
        result = cli(*argv)
        assert (result.code, result.out) == (2, ""), argv
        assert result.err.startswith("image-ancestry import: "), result.err


# -- docker-archive --------------------------------------------------------------------------


def test_docker_archive(cli: Cli, images: Images, tmp_path: Path) -> None:
    base = build_image(BASE_LAYERS, labels={BASE_NAME_ANNOTATION: "scratch"})
    archive = write_archive(
        tmp_path / "save.tar",
        [(base, ["r.example/base:1"]), (images.app, ["r.example/team/app:1", "app:latest"])],
    )
    docs = by_name(cli(f"docker-archive:{archive}"))
    assert sorted(docs) == ["app-1", "app-latest", "base-1"]
    assert docs["app-1"]["spec"] == {"image": "r.example/team/app:1", "layers": images.app.diff_ids}
    assert docs["app-latest"]["spec"]["image"] == "app:latest"
    assert docs["base-1"]["metadata"]["annotations"] == {
        "imageancestry.io/declared-base-name": "scratch"
    }
    # A reference picks one image; docker.io/library/ is the familiar name's long form.
    (doc,) = cli(f"docker-archive:{archive}:docker.io/library/app:latest").docs()
    assert doc["metadata"]["name"] == "app-latest"
    (doc,) = cli(f"docker-archive:{archive}:@0").docs()
    assert doc["spec"]["image"] == "r.example/base:1"
    missing = f"docker-archive:{archive}:app:2"
    assert_failed(cli(missing), missing, "not found", "r.example/team/app:1")


@pytest.mark.parametrize("blobs_layout", [False, True], ids=["classic", "docker-25"])
def test_docker_archive_layers_manifest_hashes_the_stored_layers(
    cli: Cli, images: Images, tmp_path: Path, blobs_layout: bool
) -> None:
    archive = write_archive(
        tmp_path / "save.tar", [(images.app, ["app:1"])], blobs_layout=blobs_layout
    )
    (doc,) = cli(f"docker-archive:{archive}").docs()
    assert doc["spec"]["layers"] == images.app.diff_ids
    (doc,) = cli("--layers", "manifest", f"docker-archive:{archive}").docs()
    assert doc["spec"]["layers"] == [sha256(t) for t in images.app.layer_tars]


def test_gzipped_docker_archive(cli: Cli, images: Images, tmp_path: Path) -> None:
    plain = write_archive(tmp_path / "save.tar", [(images.app, ["app:1"])])
    packed = tmp_path / "save.tar.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    (doc,) = cli(f"docker-archive:{packed}").docs()
    assert doc["spec"]["layers"] == images.app.diff_ids


def test_untagged_archive_is_named_after_the_file(cli: Cli, images: Images, tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "nightly.tar", [(images.app, [])])
    (doc,) = cli(f"docker-archive:{archive}").docs()
    assert doc["metadata"]["name"] == "nightly-" + sha256(images.app.config)[7:19]
    assert "image" not in doc["spec"]


def _archive(path: Path, manifest: object, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            add_member(tar, name, data)
        add_member(tar, "manifest.json", json.dumps(manifest).encode())
    return path


def test_archive_path_climbing_out(cli: Cli, images: Images, tmp_path: Path) -> None:
    for config_name in ("../../etc/passwd", "/etc/passwd", "a/../../x.json"):
        archive = _archive(
            tmp_path / "climb.tar",
            [{"Config": config_name, "RepoTags": ["x:1"], "Layers": []}],
            {"c.json": images.app.config},
        )
        source = f"docker-archive:{archive}"
        assert_failed(cli(source), source, "invalid", "outside the archive")


def test_archive_member_named_with_dotdot(cli: Cli, images: Images, tmp_path: Path) -> None:
    archive = _archive(tmp_path / "evil.tar", [], {"../evil.sh": b"#!/bin/sh\n"})
    source = f"docker-archive:{archive}"
    assert_failed(cli(source), source, "invalid", "unsafe path '../evil.sh'")


def test_archive_symlink_out_of_the_archive(cli: Cli, images: Images, tmp_path: Path) -> None:
    path = tmp_path / "link.tar"
    with tarfile.open(path, "w") as tar:
        link = tarfile.TarInfo("c.json")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../../etc/passwd"
        tar.addfile(link)
        entry = [{"Config": "c.json", "RepoTags": ["x:1"], "Layers": []}]
        add_member(tar, "manifest.json", json.dumps(entry).encode())
    source = f"docker-archive:{path}"
    assert_failed(cli(source), source, "invalid", "links outside the archive")


def test_archive_missing_layer(cli: Cli, images: Images, tmp_path: Path) -> None:
    manifest = [
        {
            "Config": "c.json",
            "RepoTags": ["x:1"],
            "Layers": ["l1/layer.tar", "l2/layer.tar", "l3/layer.tar"],
        }
    ]
    archive = _archive(
        tmp_path / "missing.tar",
        manifest,
        {"c.json": images.app.config, "l1/layer.tar": images.app.layer_tars[0]},
    )
    source = f"docker-archive:{archive}"
    assert_failed(cli(source), source, "invalid", "layer 'l2/layer.tar' is missing")


def test_archive_gigantic_declared_size(cli: Cli, images: Images, tmp_path: Path) -> None:
    """A header that declares a terabyte-sized config, with a few bytes behind it."""
    path = tmp_path / "huge.tar"
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["x:1"], "Layers": []}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        add_member(tar, "manifest.json", manifest)
    head = out.getvalue().rstrip(b"\0")
    head += b"\0" * (-len(head) % 512)
    huge = tarfile.TarInfo("c.json")
    huge.size = 2**40
    path.write_bytes(head + huge.tobuf(format=tarfile.GNU_FORMAT) + b"{" * 1024)
    source = f"docker-archive:{path}"
    assert_failed(cli(source), source, "invalid", "declares more bytes than the file holds")


def test_archive_config_over_the_size_limit(cli: Cli, tmp_path: Path) -> None:
    """A config that really is 9 MiB: refused from its header, before it is read."""
    archive = _archive(
        tmp_path / "big.tar",
        [{"Config": "c.json", "RepoTags": ["x:1"], "Layers": []}],
        {"c.json": b" " * (9 * 1024 * 1024)},
    )
    source = f"docker-archive:{archive}"
    assert_failed(cli(source), source, "invalid", "declares 9437184 bytes, over the 8388608")


def test_archive_that_is_not_an_image(cli: Cli, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(4096))
    assert_failed(cli(f"docker-archive:{junk}"), f"docker-archive:{junk}", "not an image")
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        add_member(tar, "README", b"hello")
    assert_failed(
        cli(f"docker-archive:{plain}"), f"docker-archive:{plain}", "not an image", "manifest.json"
    )


def test_archive_config_with_too_few_diff_ids(cli: Cli, tmp_path: Path) -> None:
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}}).encode()
    layer = layer_tar({"a": b"a"})
    archive = _archive(
        tmp_path / "odd.tar",
        [{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["l/layer.tar"]}],
        {"c.json": config, "l/layer.tar": layer},
    )
    source = f"docker-archive:{archive}"
    assert_failed(cli(source), source, "invalid", "lists 0 diff ids")


def test_image_without_layers_is_refused(cli: Cli, tmp_path: Path) -> None:
    empty = build_image([])
    layout = write_layout(tmp_path / "scratch", {"1": empty})
    assert_failed(cli(f"oci:{layout}"), f"oci:{layout}", "not an image", "no layers")


def test_the_same_image_given_twice_is_written_once(cli: Cli, images: Images) -> None:
    result = cli("-q", f"oci:{images.layout}", f"oci:{images.layout}:app-1")
    assert sorted(by_name(result)) == LAYOUT_NAMES
    assert result.out.count("kind: ContainerImage") == 4


def test_name_for_the_platforms_of_one_index(cli: Cli, images: Images) -> None:
    docs = by_name(cli("--name", "golden", f"oci:{images.layout}:multi"))
    assert sorted(docs) == ["golden-linux-amd64", "golden-linux-arm64-v8"]
    several = cli("--name", "golden", f"oci:{images.layout}")
    assert (several.code, several.out) == (2, "")
    assert "holds 4 images" in several.err


def test_layout_entry_that_is_no_manifest(cli: Cli, tmp_path: Path) -> None:
    base = build_image(BASE_LAYERS)
    layout = write_layout(tmp_path / "odd", {"1": base})
    config_digest = sha256(base.config)
    _rewrite_index(
        layout,
        lambda i: i["manifests"][0].update(
            digest=config_digest, size=len(base.config), mediaType="application/json"
        ),
    )
    assert_failed(cli(f"oci:{layout}"), f"oci:{layout}", "not an image", "application/json")
