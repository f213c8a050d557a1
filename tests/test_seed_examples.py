"""The seed document's examples (anchore-base-image-ancestry.txt), read from examples/.

debian:10 -> mynode:latest -> myapp:v1, and mypython:latest beside mynode: the two share
debian's layers, so both are children of debian:10 and neither is the other's ancestor.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from image_ancestry.engine import AncestryIndex, ImageKey
from image_ancestry.manifests import load_container_images

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEBIAN: ImageKey = ("platform", "debian-10")
MYNODE: ImageKey = ("platform", "mynode-latest")
MYAPP: ImageKey = ("team-a", "myapp-v1")
MYPYTHON: ImageKey = ("team-a", "mypython-latest")


def seed_index(enabled: bool = True) -> AncestryIndex:
    images = load_container_images([str(EXAMPLES)])
    return AncestryIndex.build((i.to_record() for i in images), user_base_image_enabled=enabled)


def names(refs: list[dict[str, object]]) -> list[ImageKey]:
    return [(str(r["namespace"]), str(r["name"])) for r in refs]


@pytest.fixture
def index() -> AncestryIndex:
    return seed_index()


def test_each_image_is_a_superset_of_its_parents_layers(index: AncestryIndex) -> None:
    debian, mynode, myapp = (index.get(k) for k in (DEBIAN, MYNODE, MYAPP))
    assert debian is not None and mynode is not None and myapp is not None
    assert mynode.layers[: len(debian.layers)] == debian.layers
    assert myapp.layers[: len(mynode.layers)] == mynode.layers


def test_debian_mynode_myapp_chain(index: AncestryIndex) -> None:
    status = index.status(MYAPP)
    assert names(status["ancestors"]) == [MYNODE, DEBIAN]  # closest first
    assert status["ancestorCount"] == 2
    assert status["parent"]["name"] == "mynode-latest"
    assert status["parent"]["image"] == "registry.example.com/mynode:latest"
    assert status["ancestors"][0]["layerCount"] == 3


def test_debian_is_the_root(index: AncestryIndex) -> None:
    assert index.roots() == [DEBIAN]
    status = index.status(DEBIAN)
    assert (status["parent"], status["baseImage"], status["ancestors"]) == (None, None, [])


def test_mynode_and_mypython_are_not_related(index: AncestryIndex) -> None:
    assert names(index.status(MYPYTHON)["ancestors"]) == [DEBIAN]
    assert names(index.status(MYNODE)["ancestors"]) == [DEBIAN]
    assert MYPYTHON not in index.children(MYNODE)


def test_mynode_and_mypython_are_both_children_of_debian(index: AncestryIndex) -> None:
    assert index.children(DEBIAN) == [MYNODE, MYPYTHON]
    assert index.children(MYNODE) == [MYAPP]


def test_marked_middle_ancestor_is_the_base_image(index: AncestryIndex) -> None:
    base = index.status(MYAPP)["baseImage"]
    assert (base["namespace"], base["name"], base["reason"]) == (*MYNODE, "MarkedBaseImage")


def test_without_marks_the_base_image_is_the_closest_ancestor(index: AncestryIndex) -> None:
    mynode = index.get(MYNODE)
    assert mynode is not None and mynode.marked
    changed = index.upsert(replace(mynode, marked=False))
    assert changed == {MYAPP}  # debian and mypython do not descend from mynode
    assert index.status(MYAPP)["baseImage"]["reason"] == "ClosestAncestor"


def test_the_flag_turns_the_mark_off() -> None:
    index = seed_index()
    assert index.set_user_base_image_enabled(False) == {MYAPP}
    base = index.status(MYAPP)["baseImage"]
    assert (base["name"], base["reason"]) == ("mynode-latest", "ClosestAncestor")
    assert seed_index(enabled=False).status(MYAPP) == index.status(MYAPP)
    assert index.set_user_base_image_enabled(True) == {MYAPP}


def test_a_marked_root_is_the_base_past_an_unmarked_parent() -> None:
    """The seed's "first ancestor with this annotation": marking debian instead of mynode
    makes debian myapp's base, though mynode is its parent."""
    index = seed_index()
    mynode, debian = index.get(MYNODE), index.get(DEBIAN)
    assert mynode is not None and debian is not None
    index.upsert(replace(mynode, marked=False))
    changed = index.upsert(replace(debian, marked=True))
    assert changed == {MYNODE, MYAPP, MYPYTHON}
    status = index.status(MYAPP)
    assert status["parent"]["name"] == "mynode-latest"
    assert (status["baseImage"]["name"], status["baseImage"]["reason"]) == (
        "debian-10",
        "MarkedBaseImage",
    )


def test_the_flag_reaches_grandchildren_of_a_marked_root() -> None:
    """With debian marked, turning the flag off changes every image below it, myapp too
    (its base falls back from debian, two levels up, to its parent mynode)."""
    index = seed_index()
    mynode, debian = index.get(MYNODE), index.get(DEBIAN)
    assert mynode is not None and debian is not None
    index.upsert(replace(mynode, marked=False))
    index.upsert(replace(debian, marked=True))
    assert index.set_user_base_image_enabled(False) == {MYNODE, MYAPP, MYPYTHON}
    assert index.status(MYAPP)["baseImage"]["name"] == "mynode-latest"
