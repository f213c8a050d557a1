"""The ancestry index: every image's ancestors, parent and base image, kept up to date.

Rule 1 of the contract makes A an ancestor of B when A's layer list is a proper prefix of
B's. So the index is a trie over layer digests, each image hung on the node of its full
layer list. An image's ancestors are then exactly the images on the nodes above its own, and
its descendants the images below. The trie is compressed (a radix tree): nodes exist only
where images end or paths fork, so building costs one step per such node on the way down
(each comparing a run of layers at C speed) and a status walks only past its ancestors and
fork points. Nothing ever compares pairs of images, and no cost grows with the pairs.

Every mutating call returns the keys of the images whose :meth:`AncestryIndex.status`
changed, and only those, so the operator patches exactly what moved. A newly added image is
in its own changed set (it had no status before); a removed one is not (it has none after).

Status dicts follow the contract's status shape. A reference (``parent``, ``baseImage``, an
``ancestors`` entry) leaves out ``image`` and ``digest`` when that image has none, as
Kubernetes' ``omitempty`` would: the CRD schema can then keep both typed as strings, and
``kubectl`` columns show ``<none>`` rather than ``null``.

Pure Python on purpose: no Kubernetes, no I/O, no pydantic, so the operator, the webhook
and the offline CLI share it, and tests need no cluster.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator, KeysView
from dataclasses import dataclass
from typing import Any

ImageKey = tuple[str, str]
"""(namespace, name): ContainerImages are namespaced, ancestry crosses namespaces."""

MAX_LISTED_ANCESTORS = 100
"""``status.ancestors`` lists at most this many (``ancestorCount`` counts them all)."""

MARKED_BASE_IMAGE = "MarkedBaseImage"
CLOSEST_ANCESTOR = "ClosestAncestor"


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """What the engine knows of one image. ``marked`` is the parsed annotation (rule 5)."""

    namespace: str
    name: str
    layers: tuple[str, ...]
    image: str | None = None
    digest: str | None = None
    marked: bool = False

    @property
    def key(self) -> ImageKey:
        return (self.namespace, self.name)


class _Node:
    """A layer prefix where something happens: images end here, or paths branch.

    The trie is compressed: runs of layers with nothing in between are one edge, ``label``
    (the layers from the parent's prefix to this one, never empty below the root). So a
    walk from an image to the root passes only image-holding and branching nodes, not one
    node per layer. ``depth`` is the number of layers in this prefix. ``images`` holds the
    images whose layers end exactly here (several: identical layer lists, e.g. retags),
    sorted by key because that is the tie order of rule 2; ``marked`` counts the marked ones
    so walks can skip the lookup. ``children`` is keyed by the first layer of their label.
    """

    __slots__ = ("children", "depth", "images", "label", "marked", "parent", "refs")

    def __init__(self, parent: _Node | None, label: tuple[str, ...], depth: int) -> None:
        self.parent = parent
        self.label = label
        self.depth = depth
        self.children: dict[str, _Node] = {}
        self.images: list[ImageRecord] = []
        # The images' references for status(), in images' order, copied out; None when
        # stale, rebuilt on first use (_refs). Lazy, so that a bulk load followed by
        # statuses() (which makes its own) never builds them; see also _build_refs.
        self.refs: tuple[dict[str, Any], ...] | None = ()
        self.marked = 0


def _reference(record: ImageRecord) -> dict[str, Any]:
    ref: dict[str, Any] = {"namespace": record.namespace, "name": record.name}
    if record.image is not None:
        ref["image"] = record.image
    if record.digest is not None:
        ref["digest"] = record.digest
    return ref


class AncestryIndex:
    """All known images, indexed by layer prefix. Not thread-safe: one writer at a time."""

    def __init__(self, user_base_image_enabled: bool = True) -> None:
        self._root = _Node(None, (), 0)
        self._records: dict[ImageKey, ImageRecord] = {}
        self._nodes: dict[ImageKey, _Node] = {}
        self._enabled = user_base_image_enabled
        self._refs_pending = False  # build() left every node's refs to _build_refs

    @classmethod
    def build(
        cls, records: Iterable[ImageRecord], user_base_image_enabled: bool = True
    ) -> AncestryIndex:
        """A fresh index of ``records`` without computing changed sets (a bulk load).

        Raises :class:`ValueError` on two records with the same key: a bulk load that
        silently kept one of them would hide a caller's bug.
        """
        index = cls(user_base_image_enabled)
        # A bulk load allocates objects by the hundred thousand, and the cyclic collector
        # would rescan the growing trie over and over (it was more than half the build time
        # at 100k images). Parent links are cycles, but none becomes garbage during a load,
        # so pause the collector, restoring the caller's setting.
        paused = gc.isenabled()
        gc.disable()
        try:
            known = index._records
            attach = index._attach
            for record in records:
                if (record.namespace, record.name) in known:
                    raise ValueError(f"duplicate image {record.namespace}/{record.name}")
                attach(record)
            index._refs_pending = True
        finally:
            if paused:
                gc.enable()
        return index

    # --- reading -------------------------------------------------------------------------

    @property
    def user_base_image_enabled(self) -> bool:
        return self._enabled

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __iter__(self) -> Iterator[ImageKey]:
        return iter(self._records)

    def keys(self) -> KeysView[ImageKey]:
        """A live view of every image's key, in no particular order."""
        return self._records.keys()

    def get(self, key: ImageKey) -> ImageRecord | None:
        return self._records.get(key)

    def status(self, key: ImageKey) -> dict[str, Any]:
        """The contract's status of one image (without conditions and observedGeneration).

        Raises :class:`KeyError` for an unknown image.
        """
        node = self._nodes[key]
        if self._refs_pending:
            self._build_refs()
        ancestors: list[dict[str, Any]] = []
        count = 0
        parent: dict[str, Any] | None = None
        base: dict[str, Any] | None = None
        look_for_mark = self._enabled
        above = node.parent
        while above is not None:
            refs = above.refs
            if refs is None:
                refs = _refs(above)
            if refs:
                if parent is None:
                    parent = refs[0]
                if len(refs) == 1 and count < MAX_LISTED_ANCESTORS:  # the common case
                    ancestors.append({**refs[0], "layerCount": above.depth})
                elif count < MAX_LISTED_ANCESTORS:
                    depth = above.depth
                    for ref in refs[: MAX_LISTED_ANCESTORS - count]:
                        ancestors.append({**ref, "layerCount": depth})
                count += len(refs)
                if look_for_mark and above.marked:
                    base = next(r for r, i in zip(refs, above.images, strict=True) if i.marked)
                    look_for_mark = False
            above = above.parent
        if base is not None:
            base = {**base, "reason": MARKED_BASE_IMAGE}
        elif parent is not None:
            base = {**parent, "reason": CLOSEST_ANCESTOR}
        return {
            "layerCount": node.depth,
            "ancestorCount": count,
            "ancestors": ancestors,
            "parent": None if parent is None else dict(parent),
            "baseImage": base,
        }

    def statuses(self) -> Iterator[tuple[ImageKey, dict[str, Any]]]:
        """Every image's status, equal to :meth:`status`, in no particular order.

        For serialising everything at once (the offline ``compute``): one walk down the
        trie hands each node's ancestor list on to the nodes below, instead of every image
        walking up on its own. The price is sharing: images with the same ancestors get the
        same ``ancestors`` list and the same ``parent``/``baseImage``/entry dicts. Treat
        them as read-only; use :meth:`status` for a dict of your own.
        """
        enabled = self._enabled
        # What a node's images see from above: (node, ancestors closest first, ancestor
        # count, parent reference, base image, the closest marked ancestor's reference).
        # All but the node are shared by every node below the same image-holding node.
        Frame = tuple[
            _Node,
            list[dict[str, Any]],
            int,
            dict[str, Any] | None,
            dict[str, Any] | None,
            dict[str, Any] | None,
        ]
        stack: list[Frame] = [
            (child, [], 0, None, None, None) for child in self._root.children.values()
        ]
        pop = stack.pop
        push = stack.append
        while stack:
            node, chain, count, parent, base, marked = pop()
            images = node.images
            if images:
                depth = node.depth
                for record in images:
                    yield (
                        (record.namespace, record.name),
                        {
                            "layerCount": depth,
                            "ancestorCount": count,
                            "ancestors": chain,
                            "parent": parent,
                            "baseImage": base,
                        },
                    )
                if not node.children:  # a leaf (most image nodes): nothing below to hand on
                    continue
                # What the images below see of this node. Fresh references, not node.refs:
                # these are handed out, and the node's own stay the engine's.
                if len(images) == 1:  # the common case, without a comprehension's frame
                    parent = _reference(images[0])
                    chain = [{**parent, "layerCount": depth}, *chain]
                    count += 1
                    if enabled and node.marked:  # a closer mark overrides the ones above
                        marked = parent
                else:
                    refs = [_reference(image) for image in images]
                    chain = [{**ref, "layerCount": depth} for ref in refs] + chain
                    count += len(refs)
                    if enabled and node.marked:
                        marked = next(r for r, i in zip(refs, images, strict=True) if i.marked)
                    parent = refs[0]
                if len(chain) > MAX_LISTED_ANCESTORS:
                    del chain[MAX_LISTED_ANCESTORS:]  # the closest ones stay listed
                if marked is not None:
                    base = {**marked, "reason": MARKED_BASE_IMAGE}
                else:
                    base = {**parent, "reason": CLOSEST_ANCESTOR}
            for child in node.children.values():
                push((child, chain, count, parent, base, marked))

    def children(self, key: ImageKey) -> list[ImageKey]:
        """The images whose parent ``key`` is, sorted by key.

        Of several images with identical layers only the first by key is a parent (rule 2
        breaks the tie), so the others have no children.
        """
        node = self._nodes[key]
        if node.images[0].key != key:
            return []
        return sorted(record.key for record in self._nearest_images_below(node))

    def roots(self) -> list[ImageKey]:
        """The images without ancestors, sorted by key."""
        return sorted(record.key for record in self._nearest_images_below(self._root))

    # --- writing -------------------------------------------------------------------------

    def upsert(self, record: ImageRecord) -> set[ImageKey]:
        """Add ``record``, or replace the image with its key. Returns the changed statuses.

        Raises :class:`ValueError`, changing nothing, for a record without layers.
        """
        if not record.layers:
            raise ValueError(f"image {record.namespace}/{record.name} has no layers")
        key = record.key
        old = self._records.get(key)
        if old is None:
            node = self._attach(record)
            changed = self._keys_below(node)
            changed.add(key)
            return changed
        if old == record:
            return set()
        if old.layers != record.layers:
            return self._move(old, record)
        return self._restate(old, record)

    def remove(self, key: ImageKey) -> set[ImageKey]:
        """Forget an image; every image below it lost an ancestor. Unknown keys: no change."""
        record = self._records.get(key)
        if record is None:
            return set()
        node = self._detach(record)
        changed = self._keys_below(node)
        self._prune(node)
        return changed

    def set_user_base_image_enabled(self, enabled: bool) -> set[ImageKey]:
        """Rule 6. The images that change are exactly those with a marked ancestor: with the
        flag on their base is a marked image (reason MarkedBaseImage), with it off the
        parent (ClosestAncestor), so even a marked parent changes by its reason."""
        if enabled == self._enabled:
            return set()
        self._enabled = enabled
        changed: set[ImageKey] = set()
        stack = [(self._root, False)]
        while stack:
            node, has_marked_ancestor = stack.pop()
            if has_marked_ancestor:
                changed.update(record.key for record in node.images)
            below = has_marked_ancestor or node.marked > 0
            stack.extend((child, below) for child in node.children.values())
        return changed

    # --- internals -----------------------------------------------------------------------

    def _attach(self, record: ImageRecord) -> _Node:
        layers = record.layers
        end = len(layers)
        if not end:  # the root is every image's prefix: an image there would be everyone's
            raise ValueError(f"image {record.namespace}/{record.name} has no layers")
        node = self._root
        position = 0
        while position < end:
            child = node.children.get(layers[position])
            if child is None:  # nothing shares the rest: one new edge
                child = _Node(node, layers[position:], end)
                node.children[layers[position]] = child
                node = child
                break
            label = child.label
            stop = position + len(label)
            if layers[position:stop] == label:  # the whole edge matches: go down it
                node = child
                position = stop
                continue
            # The edge and the layers part after ``common`` layers: split the edge there.
            common = 1
            while position + common < end and layers[position + common] == label[common]:
                common += 1
            middle = _Node(node, label[:common], node.depth + common)
            node.children[layers[position]] = middle
            child.label = label[common:]
            child.parent = middle
            middle.children[child.label[0]] = child
            node = middle
            position += common
        images = node.images
        images.append(record)
        if len(images) > 1:
            images.sort(key=_record_key)
        node.refs = None  # rebuilt when next needed
        if record.marked:
            node.marked += 1
        key = (record.namespace, record.name)
        self._records[key] = record
        self._nodes[key] = node
        return node

    def _build_refs(self) -> None:
        """Every node's references at once after a bulk load, the collector paused as in
        :meth:`build`. Built one by one in :meth:`status` calls, the new objects would set
        off collector passes that rescan the whole fresh index (about 10 to 20% more time
        for build + status() of every image at 100k).
        """
        self._refs_pending = False
        paused = gc.isenabled()
        gc.disable()
        try:
            for node in self._nodes.values():
                if node.refs is None:
                    _refs(node)
        finally:
            if paused:
                gc.enable()

    def _detach(self, record: ImageRecord) -> _Node:
        """Take ``record`` off its node (leaving empty nodes for :meth:`_prune`)."""
        key = record.key
        node = self._nodes.pop(key)
        del self._records[key]
        node.images = [other for other in node.images if other.key != key]
        node.refs = None  # rebuilt when next needed
        if record.marked:
            node.marked -= 1
        return node

    @staticmethod
    def _prune(node: _Node) -> None:
        """Restore the compression after ``node`` lost images: a node without images
        must branch (two children or more), else it goes, and so may its parent."""
        while node.parent is not None and not node.images and len(node.children) < 2:
            parent = node.parent
            if node.children:  # one child: it takes over this node's edge
                (child,) = node.children.values()
                child.label = node.label + child.label
                child.parent = parent
                parent.children[node.label[0]] = child
                return
            del parent.children[node.label[0]]
            node = parent

    @staticmethod
    def _keys_below(node: _Node) -> set[ImageKey]:
        """Keys of the images strictly below ``node``: those that have it above them."""
        keys: set[ImageKey] = set()
        stack = list(node.children.values())
        while stack:
            current = stack.pop()
            keys.update(record.key for record in current.images)
            stack.extend(current.children.values())
        return keys

    @staticmethod
    def _nearest_images_below(node: _Node) -> Iterator[ImageRecord]:
        """Images on the first image-holding node of each path down from ``node``."""
        stack = list(node.children.values())
        while stack:
            current = stack.pop()
            if current.images:
                yield from current.images
            else:
                stack.extend(current.children.values())

    def _move(self, old: ImageRecord, new: ImageRecord) -> set[ImageKey]:
        """An image's layers changed: it leaves one place in the trie for another.

        Images below only one of the two places gained or lost an ancestor, so their
        ``ancestorCount`` moved: changed for certain. Images below both (the two places lie
        on one path) keep the image as an ancestor at another depth; for them, and for the
        image itself, compare statuses before and after.
        """
        old_node = self._nodes[old.key]
        lost = self._keys_below(old_node)
        before = {key: self.status(key) for key in lost}
        before[old.key] = self.status(old.key)
        self._detach(old)
        new_node = self._attach(new)
        self._prune(old_node)
        gained = self._keys_below(new_node)
        changed = lost ^ gained
        for key in (lost & gained) | {new.key}:
            if self.status(key) != before[key]:
                changed.add(key)
        return changed

    def _restate(self, old: ImageRecord, new: ImageRecord) -> set[ImageKey]:
        """Same layers, other image, digest or mark: find the descendants that see it.

        A descendant sees the image's reference when the image is listed among its first
        :data:`MAX_LISTED_ANCESTORS` ancestors, or is its base image. Its mark matters to a
        descendant when no marked image comes before it in that descendant's order. Both
        are decided walking down with a running count of the ancestors in between, pruning
        where neither can hold any more, so no status is computed.
        """
        node = self._nodes[old.key]
        self._detach(old)
        self._attach(new)
        reference_changed = old.image != new.image or old.digest != new.digest
        mark_changed = self._enabled and old.marked != new.marked
        # Where the image stands among equals, and whether an equal marked one precedes it.
        rank = 0
        blocked = not self._enabled
        for record in node.images:
            if record.key == new.key:
                break
            rank += 1
            blocked = blocked or record.marked
        # Marks matter below only while no closer mark hides this one.
        mark_matters = mark_changed or (reference_changed and new.marked and self._enabled)

        changed: set[ImageKey] = set()
        stack = [(child, rank, blocked) for child in node.children.values()]
        while stack:
            current, position, hidden = stack.pop()
            listed = reference_changed and position < MAX_LISTED_ANCESTORS
            if current.images and (listed or (mark_matters and not hidden)):
                changed.update(record.key for record in current.images)
            position += len(current.images)
            hidden = hidden or current.marked > 0
            still_listed = reference_changed and position < MAX_LISTED_ANCESTORS
            if still_listed or (mark_matters and not hidden):
                stack.extend((child, position, hidden) for child in current.children.values())
        return changed


def _refs(node: _Node) -> tuple[dict[str, Any], ...]:
    """``node.refs``, rebuilt from ``node.images`` (in their order) and cached."""
    images = node.images
    if len(images) == 1:  # the common case
        refs: tuple[dict[str, Any], ...] = (_reference(images[0]),)
    else:
        refs = tuple([_reference(image) for image in images])
    node.refs = refs
    return refs


def _record_key(record: ImageRecord) -> ImageKey:
    return (record.namespace, record.name)
