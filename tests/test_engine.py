"""The engine against the naive pairwise reference (tests/naive_ancestry.py).

Layers come from a tiny alphabet so that random lists collide: identical lists under two
names, repeats inside one list, shared prefixes that are no image, supersets that are not
prefixes. Marks are drawn as raw annotation values and go through ``parse_mark``, as the
operator feeds them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_ancestry.engine import (
    MAX_LISTED_ANCESTORS,
    AncestryIndex,
    ImageKey,
    ImageRecord,
)
from image_ancestry.model import MarkState, parse_mark
from tests import naive_ancestry as naive

LAYERS = [f"sha256:{c * 64}" for c in "abcd"]
DRAWN_LAYERS = LAYERS[:3]  # few, so that random lists collide often
MARK_VALUES = [None, "true", "True", " true", "TRUE\n", "false", "False ", "yes", "1", ""]

keys = st.tuples(st.sampled_from(["ns-a", "ns-b"]), st.sampled_from(["w", "x", "y", "z", "zz"]))
layer_lists = st.lists(st.sampled_from(DRAWN_LAYERS), min_size=1, max_size=4).map(tuple)


@st.composite
def records(draw: st.DrawFn, key: ImageKey | None = None) -> ImageRecord:
    namespace, name = key if key is not None else draw(keys)
    mark = draw(st.sampled_from(MARK_VALUES))
    return ImageRecord(
        namespace=namespace,
        name=name,
        layers=draw(layer_lists),
        image=draw(st.sampled_from([None, "r.example/a:1", "r.example/b:2"])),
        digest=draw(st.sampled_from([None, f"sha256:{'e' * 64}"])),
        marked=parse_mark(mark) is MarkState.MARKED,
    )


def unique(items: list[ImageRecord]) -> list[ImageRecord]:
    return list({r.key: r for r in items}.values())


forests = st.lists(records(), max_size=14).map(unique)


def check_against_naive(index: AncestryIndex, current: dict[ImageKey, ImageRecord]) -> None:
    """Every answer the index gives equals the reference's."""
    expected = naive.all_statuses(current.values(), index.user_base_image_enabled)
    assert {key: index.status(key) for key in index} == expected
    bulk = list(index.statuses())
    assert len(bulk) == len(expected) and dict(bulk) == expected
    assert index.roots() == naive.roots(current.values())
    for key in current:
        assert index.children(key) == naive.children(key, current.values())
        assert index.get(key) == current[key]
    assert len(index) == len(current)
    check_trie(index)


def check_trie(index: AncestryIndex) -> None:
    """The compressed trie's invariants: every node below the root holds images or
    branches, is keyed by its label's first layer, and its depth adds up."""
    nodes = 0
    stack = [index._root]
    while stack:
        node = stack.pop()
        for first, child in node.children.items():
            assert child.parent is node and child.label and child.label[0] == first
            assert child.depth == node.depth + len(child.label)
            assert child.images or len(child.children) >= 2
            assert child.marked == sum(r.marked for r in child.images)
            assert [r.key for r in child.images] == sorted(r.key for r in child.images)
            stack.append(child)
        nodes += 1
    assert nodes <= 2 * len(index) + 1  # compression bounds the node count


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forests, st.booleans())
def test_build_matches_naive(forest: list[ImageRecord], enabled: bool) -> None:
    index = AncestryIndex.build(forest, user_base_image_enabled=enabled)
    check_against_naive(index, {r.key: r for r in forest})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forests, st.booleans(), st.randoms(use_true_random=False))
def test_upserts_in_any_order_match_build(
    forest: list[ImageRecord], enabled: bool, rng: Any
) -> None:
    shuffled = list(forest)
    rng.shuffle(shuffled)
    index = AncestryIndex(enabled)
    for record in shuffled:
        index.upsert(record)
    built = AncestryIndex.build(forest, enabled)
    assert {k: index.status(k) for k in index} == {k: built.status(k) for k in built}


# One step of a random history: (operation, argument).
operations = st.one_of(
    st.tuples(st.just("upsert"), records()),
    st.tuples(st.just("remove"), keys),
    st.tuples(st.just("annotate"), keys, st.sampled_from(MARK_VALUES)),
    st.tuples(st.just("retag"), keys, st.sampled_from([None, "r.example/a:1", "r.example/c:3"])),
    st.tuples(st.just("flag")),  # toggles: setting the same value is tested on its own
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forests, st.booleans(), st.lists(operations, max_size=12))
def test_incremental_changes_equal_full_recompute(
    forest: list[ImageRecord], enabled: bool, steps: list[tuple[Any, ...]]
) -> None:
    index = AncestryIndex.build(forest, enabled)
    current = {r.key: r for r in forest}
    for step in steps:
        before = naive.all_statuses(current.values(), index.user_base_image_enabled)
        changed = apply(index, current, step)
        after = naive.all_statuses(current.values(), index.user_base_image_enabled)
        # Exactly the images that exist now and whose status is new or different.
        assert changed == {key for key, status in after.items() if before.get(key) != status}
        check_against_naive(index, current)


def apply(
    index: AncestryIndex, current: dict[ImageKey, ImageRecord], step: tuple[Any, ...]
) -> set[ImageKey]:
    """Apply one step to the index and to the plain dict the reference reads."""
    operation = step[0]
    if operation == "upsert":
        record: ImageRecord = step[1]
        current[record.key] = record
        return index.upsert(record)
    if operation == "remove":
        current.pop(step[1], None)
        return index.remove(step[1])
    if operation == "flag":
        return index.set_user_base_image_enabled(not index.user_base_image_enabled)
    old = current.get(step[1])
    if old is None:
        return set()
    if operation == "annotate":
        new = replace(old, marked=parse_mark(step[2]) is MarkState.MARKED)
    else:
        new = replace(old, image=step[2])
    current[new.key] = new
    return index.upsert(new)


def chain(count: int, namespace: str = "ns") -> list[ImageRecord]:
    """``count`` images, each the previous one plus a layer: image i has i+1 layers."""
    layers = [f"sha256:{i:064x}" for i in range(count)]
    return [ImageRecord(namespace, f"i{i:03d}", tuple(layers[: i + 1])) for i in range(count)]


def test_ancestor_list_is_capped_but_counted() -> None:
    images = chain(MAX_LISTED_ANCESTORS + 20)
    index = AncestryIndex.build(images)
    top = images[-1]
    status = index.status(top.key)
    assert status["ancestorCount"] == MAX_LISTED_ANCESTORS + 19
    assert len(status["ancestors"]) == MAX_LISTED_ANCESTORS
    assert status["ancestors"][0]["name"] == images[-2].name
    assert status == naive.status(top, images, True)
    assert dict(index.statuses()) == naive.all_statuses(images, True)


def test_changes_past_the_listed_cap() -> None:
    """A far ancestor's spec.image is not shown past the cap, unless it is the base."""
    images = chain(MAX_LISTED_ANCESTORS + 5)
    index = AncestryIndex.build(images)
    far = images[0]
    # The 101st ancestor (and beyond) of the top images does not list images[0].
    changed = index.upsert(replace(far, image="r.example/new:1"))
    unlisted = {r.key for r in images[MAX_LISTED_ANCESTORS + 1 :]}
    assert changed == {r.key for r in images[1:]} - unlisted
    # Marked, it is the base of every image above it, listed or not.
    assert index.upsert(replace(far, image="r.example/new:1", marked=True)) == {
        r.key for r in images[1:]
    }
    # A second reference change now reaches all of them through baseImage.
    assert index.upsert(replace(far, image="r.example/new:2", marked=True)) == {
        r.key for r in images[1:]
    }
    # The bulk walk agrees past the cap, with a closer mark overriding a farther one.
    index.upsert(replace(images[50], marked=True))
    current = [r for r in (index.get(k) for k in index) if r is not None]
    assert dict(index.statuses()) == naive.all_statuses(current)


def test_idempotent_upsert_and_unknown_remove_change_nothing() -> None:
    images = chain(4)
    index = AncestryIndex.build(images)
    assert index.upsert(images[1]) == set()
    assert index.remove(("ns", "missing")) == set()
    assert index.set_user_base_image_enabled(True) == set()


def test_build_rejects_duplicates() -> None:
    images = chain(2)
    with pytest.raises(ValueError, match="duplicate image ns/i000"):
        AncestryIndex.build([*images, images[0]])


def test_unknown_key_raises() -> None:
    index = AncestryIndex()
    with pytest.raises(KeyError):
        index.status(("ns", "nope"))
    assert index.get(("ns", "nope")) is None
    assert ("ns", "nope") not in index


def test_references_omit_missing_image_and_digest() -> None:
    base = ImageRecord("ns", "base", (LAYERS[0],))
    child = ImageRecord("ns", "child", (LAYERS[0], LAYERS[1]))
    index = AncestryIndex.build([base, child])
    status = index.status(child.key)
    assert status["parent"] == {"namespace": "ns", "name": "base"}
    assert status["baseImage"] == {"namespace": "ns", "name": "base", "reason": "ClosestAncestor"}
    assert status["ancestors"] == [{"namespace": "ns", "name": "base", "layerCount": 1}]


def test_removing_the_last_image_empties_the_trie() -> None:
    images = chain(5)
    index = AncestryIndex.build(images)
    for record in images:
        index.remove(record.key)
    assert len(index) == 0
    assert index.roots() == []
    assert not index._root.children  # no node left behind


def test_a_marked_twin_first_by_key_hides_the_other() -> None:
    """Identical layers: the first by key is the first marked ancestor (rule 2's ties)."""
    first = ImageRecord("ns", "a", (LAYERS[0],), marked=True)
    second = ImageRecord("ns", "b", (LAYERS[0],), marked=True)
    child = ImageRecord("ns", "c", (LAYERS[0], LAYERS[1]))
    index = AncestryIndex.build([first, second, child])
    assert index.status(child.key)["baseImage"]["name"] == "a"
    assert index.upsert(replace(second, marked=False)) == set()
    assert index.upsert(replace(second, marked=True)) == set()
    assert index.upsert(replace(first, marked=False)) == {child.key}
    assert index.status(child.key)["baseImage"]["name"] == "b"


def test_moving_an_ancestor_along_the_path_past_the_cap() -> None:
    """An ancestor that stays an ancestor but only beyond the listed cap changes nothing
    for the images on top, though its layerCount moved."""
    images = chain(MAX_LISTED_ANCESTORS + 5)
    index = AncestryIndex.build(images)
    bottom = images[0]
    moved = replace(bottom, layers=images[1].layers)  # now a twin of images[1]
    before = {key: index.status(key) for key in index}
    changed = index.upsert(moved)
    after = {key: index.status(key) for key in index}
    assert changed == {key for key in after if before[key] != after[key]}
    top = images[-1].key
    assert top not in changed  # i000 is neither listed nor base for the top image
    assert images[2].key in changed


A, B, C, D = LAYERS


@pytest.mark.parametrize(
    ("first", "second", "related"),
    [
        ((A, B), (A, B, C), True),  # a proper prefix: ancestor
        ((A, B), (A, B), False),  # identical lists: neither is the other's ancestor
        ((A, B), (C, A, B), False),  # a superset that is no prefix (rule 1)
        ((A, B), (A, C, B), False),  # the same layers, another order
        ((A,), (A, A), True),  # a digest repeated inside one list (the empty layer)
        ((A, A), (A, A, A, B), True),
        ((A, B, C), (A, B, D), False),  # siblings over a shared prefix that is no image
    ],
)
def test_rule_one(first: tuple[str, ...], second: tuple[str, ...], related: bool) -> None:
    one, two = ImageRecord("ns", "one", first), ImageRecord("ns", "two", second)
    index = AncestryIndex.build([one, two])
    assert (index.status(two.key)["ancestorCount"] == 1) is related
    assert index.status(one.key)["ancestorCount"] == 0
    assert index.roots() == ([one.key] if related else [one.key, two.key])


def test_records_without_layers_are_refused_and_change_nothing() -> None:
    images = chain(2)
    index = AncestryIndex.build(images)
    with pytest.raises(ValueError, match="has no layers"):
        index.upsert(replace(images[0], layers=()))
    with pytest.raises(ValueError, match="has no layers"):
        AncestryIndex.build([ImageRecord("ns", "empty", ())])
    assert index.get(images[0].key) == images[0]
    assert index.status(images[1].key)["ancestorCount"] == 1
