"""SOURCE parsing and ContainerImage naming."""

from __future__ import annotations

import io
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from image_ancestry.importer.errors import SourceSyntaxError
from image_ancestry.importer.naming import DNS1123_LABEL, NameRequest, assign_names, sanitize
from image_ancestry.importer.progress import Progress
from image_ancestry.importer.sources import (
    ArchiveSource,
    OciSource,
    RegistrySource,
    is_loopback_host,
    parse_source,
)

DIGEST = "sha256:" + "ab" * 32


def test_oci_source_with_and_without_tag() -> None:
    assert parse_source("oci:/srv/layout:v1") == OciSource(
        "oci:/srv/layout:v1", "/srv/layout", "v1"
    )
    assert parse_source("oci:layout") == OciSource("oci:layout", "layout", None)


def test_archive_source_with_reference() -> None:
    assert parse_source("docker-archive:a.tar") == ArchiveSource(
        "docker-archive:a.tar", "a.tar", None
    )
    assert parse_source("docker-archive:a.tar:app:1").ref == "app:1"  # type: ignore[union-attr]
    assert parse_source("docker-archive:a.tar:@1").ref == "@1"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "host", "repository", "tag", "digest", "reference"),
    [
        ("docker://r.example/app:1", "r.example", "app", "1", None, "r.example/app:1"),
        (
            "docker://127.0.0.1:5000/team/app@" + DIGEST,
            "127.0.0.1:5000",
            "team/app",
            None,
            DIGEST,
            "127.0.0.1:5000/team/app@" + DIGEST,
        ),
        ("docker://localhost:5000/a:b", "localhost:5000", "a", "b", None, "localhost:5000/a:b"),
        ("docker://alpine", "docker.io", "library/alpine", None, None, "alpine"),
        ("docker://team/app:2", "docker.io", "team/app", "2", None, "team/app:2"),
        ("docker://[::1]:5000/app:1", "[::1]:5000", "app", "1", None, "[::1]:5000/app:1"),
    ],
)
def test_registry_source(
    text: str, host: str, repository: str, tag: str | None, digest: str | None, reference: str
) -> None:
    source = parse_source(text)
    assert isinstance(source, RegistrySource)
    assert (source.host, source.repository, source.tag, source.digest) == (
        host,
        repository,
        tag,
        digest,
    )
    assert source.reference == reference
    assert source.manifest_ref == (digest or tag or "latest")


@pytest.mark.parametrize(
    "text",
    [
        "layout",  # no transport
        "oci:",  # no directory
        "oci:dir:bad tag",
        "docker:r.example/app",  # not docker://
        "docker://r.example/App:1",  # upper case repository
        "docker://r.example/app@sha256",  # not a digest
        "docker://r.example/app:-x",  # bad tag
        "docker-archive:a.tar:@x",
        "containers-storage:app",  # a skopeo transport we do not read
    ],
)
def test_bad_sources(text: str) -> None:
    with pytest.raises(SourceSyntaxError, match="'"):
        parse_source(text)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("10.0.0.1:5000", False),
        ("r.example", False),
        ("localhost.r.example", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_name_from_repository_and_tag() -> None:
    request = NameRequest(identity="x", components=("r.example", "team", "My_App"), tag="v1.2")
    assert assign_names([request]) == ["my-app-v1-2"]


def test_name_from_digest_when_no_tag() -> None:
    request = NameRequest(identity="x", components=("r.example", "app"), digest=DIGEST)
    assert assign_names([request]) == ["app-abababababab"]


def test_collisions_take_more_of_the_repository_then_a_hash() -> None:
    a = NameRequest(identity="a", components=("r.example", "team-a", "app"), tag="1")
    b = NameRequest(identity="b", components=("r.example", "team-b", "app"), tag="1")
    c = NameRequest(identity="c", components=("r.example", "other"), tag="1")
    assert assign_names([a, b, c]) == ["team-a-app-1", "team-b-app-1", "other-1"]
    # Same repository and tag in two layouts of the same directory name: only a hash differs.
    x = NameRequest(identity="oci:one/shop", components=("shop",), tag="1")
    y = NameRequest(identity="oci:two/shop", components=("shop",), tag="1")
    names = assign_names([x, y])
    assert len(set(names)) == 2
    assert all(n.startswith("shop-1-") and DNS1123_LABEL.fullmatch(n) for n in names)


def test_names_do_not_depend_on_order() -> None:
    requests = [
        NameRequest(identity=str(i), components=("r", team, "app"), tag="1")
        for i, team in enumerate(["a", "b", "a"])
    ]
    expected = dict(zip(requests, assign_names(requests), strict=True))
    for order in itertools.permutations(requests):
        assert assign_names(list(order)) == [expected[r] for r in order]
    assert len(set(expected.values())) == 3


def test_equal_requests_get_equal_names() -> None:
    a = NameRequest(identity="same", components=("app",), tag="1")
    assert assign_names([a, a]) == ["app-1", "app-1"]


def test_long_names_are_cut_with_a_hash() -> None:
    long_a = sanitize("x" * 80 + "a")
    long_b = sanitize("x" * 80 + "b")
    assert len(long_a) == 63 and long_a != long_b
    assert DNS1123_LABEL.fullmatch(long_a)


@given(st.text(max_size=100))
def test_sanitize_always_gives_a_dns_label(text: str) -> None:
    assert DNS1123_LABEL.fullmatch(sanitize(text))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal() -> None:
    stream = _Terminal()
    progress = Progress(4, stream)
    for n in range(4):
        progress.advance(f"oci:l:{n}", 1 if n != 2 else None)
    frames = stream.getvalue().split("\r\x1b[K")[1:]
    assert frames[0].startswith("[######..................] 1/4 oci:l:0")
    assert frames[-1] == "[########################] 4/4 oci:l:3\n"
    assert "\n" not in "".join(frames[:-1])  # redrawn in place until the end


def test_no_progress_for_one_source() -> None:
    stream = _Terminal()
    Progress(1, stream).advance("oci:l", 1)
    assert stream.getvalue() == ""
