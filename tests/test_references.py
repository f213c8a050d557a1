"""Image reference normalisation: examples from the runtime's behaviour, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from image_ancestry.references import (
    Reference,
    ReferenceError,
    normalise,
    parse_reference,
    split_digest,
    try_normalise,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nginx", "docker.io/library/nginx:latest"),
        ("nginx:1.25", "docker.io/library/nginx:1.25"),
        ("library/nginx", "docker.io/library/nginx:latest"),
        ("docker.io/nginx", "docker.io/library/nginx:latest"),
        ("index.docker.io/library/nginx:1", "docker.io/library/nginx:1"),
        ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
        ("a/b/c", "docker.io/a/b/c:latest"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app:v1", "localhost:5000/app:v1"),
        ("registry.example/team/app:1.2", "registry.example/team/app:1.2"),
        ("Registry/app", "Registry/app:latest"),  # upper case: a host, as the runtime says
        ("[::1]:5000/app", "[::1]:5000/app:latest"),
        (f"nginx@{DIGEST}", f"docker.io/library/nginx@{DIGEST}"),
        (f"nginx:1@{DIGEST}", f"docker.io/library/nginx:1@{DIGEST}"),
        (f"r.example:443/x/y:t@{DIGEST}", f"r.example:443/x/y:t@{DIGEST}"),
    ],
)
def test_normalise_as_the_runtime_does(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Nginx",  # upper case in the repository
        "r.example/App:1",
        "nginx:",
        "nginx:-bad",
        "nginx@sha256:xyz",
        "nginx@",
        "ab" * 32,  # an image ID
        "a b",
        "nginx/",
        "/nginx",
        "r.example/",
        "a..b",
        "bad_host!/app",
        "r.example/" + "a" * 300,
    ],
)
def test_rejects_what_is_no_reference(text: str) -> None:
    with pytest.raises(ReferenceError):
        parse_reference(text)
    assert try_normalise(text) is None


def test_parts() -> None:
    ref = parse_reference(f"r.example:5000/team/app:v1@{DIGEST}")
    assert ref == Reference("r.example:5000", "team/app", "v1", DIGEST)
    assert ref.name == "r.example:5000/team/app"
    assert ref.tagged == "r.example:5000/team/app:v1"
    assert parse_reference(f"app@{DIGEST}").tagged is None
    assert parse_reference("app").tagged == "docker.io/library/app:latest"
    assert split_digest(f"x:1@{DIGEST}") == ("x:1", DIGEST)
    assert split_digest("x:1") == ("x:1", None)
    assert try_normalise(None) is None


# --- properties -------------------------------------------------------------------------------

component = st.from_regex(r"[a-z0-9]{1,6}(?:(?:[._]|__|-{1,2})[a-z0-9]{1,4}){0,2}", fullmatch=True)
# A first component with a "." would be a registry host, so leading ones have none.
leading = st.from_regex(r"[a-z0-9]{1,6}(?:(?:_|__|-{1,2})[a-z0-9]{1,4}){0,2}", fullmatch=True)
path = st.builds(
    lambda first, rest: "/".join([first, *rest]), leading, st.lists(component, max_size=2)
)
host = st.one_of(
    st.sampled_from(["docker.io", "index.docker.io", "localhost", "quay.io", "[::1]"]),
    st.from_regex(r"[a-z][a-z0-9]{0,5}\.[a-z]{2,4}", fullmatch=True),
).flatmap(lambda h: st.sampled_from([h, f"{h}:5000"]))
tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}", fullmatch=True)
digest = st.from_regex(r"sha256:[a-f0-9]{64}", fullmatch=True)


@st.composite
def references(draw: st.DrawFn) -> str:
    text = draw(path)
    if draw(st.booleans()):
        text = f"{draw(host)}/{text}"
    if draw(st.booleans()):
        text += f":{draw(tag)}"
    if draw(st.booleans()):
        text += f"@{draw(digest)}"
    return text


@given(references())
def test_normalising_is_idempotent(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once
    assert parse_reference(once) == parse_reference(text)


@given(references())
def test_normal_form_is_fully_qualified(text: str) -> None:
    ref = parse_reference(text)
    assert str(ref).startswith(ref.registry + "/")
    assert ref.registry != "index.docker.io"
    assert ref.tag is not None or ref.digest is not None
    if ref.registry == "docker.io":
        assert "/" in ref.repository
    # the parts survive: the repository's last component, the tag and the digest as written
    rest, written_digest = split_digest(text)
    assert ref.digest == written_digest
    assert ref.repository.rsplit("/", 1)[-1] == rest.rsplit("/", 1)[-1].split(":")[0]


@given(path, st.one_of(st.none(), tag))
def test_familiar_and_qualified_docker_hub_names_agree(
    repository: str, given_tag: str | None
) -> None:
    suffix = "" if given_tag is None else f":{given_tag}"
    qualified = repository if "/" in repository else f"library/{repository}"
    expected = f"docker.io/{qualified}:{given_tag or 'latest'}"
    for text in (repository, f"docker.io/{repository}", f"index.docker.io/{qualified}"):
        assert normalise(text + suffix) == expected


@given(host.filter(lambda h: h.split(":")[0] not in ("docker.io", "index.docker.io")), path)
def test_other_registries_are_kept_as_written(registry: str, repository: str) -> None:
    assert normalise(f"{registry}/{repository}") == f"{registry}/{repository}:latest"
