"""Validation of ContainerImage manifests: digests, marks, and the errors people read."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_ancestry.engine import ImageRecord
from image_ancestry.model import (
    DIGEST_PATTERN,
    LAYER_CAP,
    MARK_ANNOTATION,
    ContainerImage,
    ContainerImageSpec,
    ManifestError,
    MarkState,
    parse_mark,
    validate_digest,
)

SHA256 = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "0123456789abcdef" * 8


def manifest(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "imageancestry.io/v1alpha1",
        "kind": "ContainerImage",
        "metadata": {"name": "myapp-v1", "namespace": "team-a"},
        "spec": spec or {"layers": [SHA256]},
    }


def error_of(obj: Any, **kwargs: Any) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        ContainerImage.from_manifest(obj, "examples/app.yaml", **kwargs)
    return caught.value


# --- digests --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "digest",
    [
        SHA256,
        SHA512,
        "sha384:abc",
        "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
        "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
        "a.b_c-d:=_-Az09",
    ],
)
def test_valid_digests(digest: str) -> None:
    assert validate_digest(digest) == digest
    assert re.fullmatch(DIGEST_PATTERN, digest)


@pytest.mark.parametrize(
    ("digest", "expected"),
    [
        ("sha256:xyz", "sha256 needs 64 lower-case hex characters, got 3"),
        (SHA256[:-1], "sha256 needs 64 lower-case hex characters, got 63"),
        (SHA256 + "0", "sha256 needs 64 lower-case hex characters, got 65"),
        (SHA256.upper().replace("SHA256", "sha256"), "got characters that are not lower-case hex"),
        ("sha256:" + "g" * 64, "got characters that are not lower-case hex"),
        (SHA512[:-2], "sha512 needs 128 lower-case hex characters, got 126"),
        ("SHA256:" + "a" * 64, "expected algorithm:encoded"),
        ("sha256", "expected algorithm:encoded"),
        (":abc", "expected algorithm:encoded"),
        ("sha256:", "expected algorithm:encoded"),
        ("sha256-:abc", "expected algorithm:encoded"),
        ("sha256:abc def", "expected algorithm:encoded"),
        (" " + SHA256, "expected algorithm:encoded"),
        ("sha256:" + "a" * 64 + "\n", "expected algorithm:encoded"),
        ("shä256:abc", "expected algorithm:encoded"),
        (256, "expected a string"),
        (None, "expected a string"),
        (["sha256:abc"], "expected a string"),
    ],
)
def test_invalid_digests_say_what_was_expected(digest: object, expected: str) -> None:
    with pytest.raises(ValueError) as caught:
        validate_digest(digest)
    message = str(caught.value)
    assert expected in message
    assert message.startswith(('"', "256", "null", "["))  # the bad value, quoted, comes first


def test_pattern_is_re2_compatible() -> None:
    """No lookarounds or backreferences: the CRD's OpenAPI pattern is evaluated by RE2."""
    assert not re.search(r"\(\?[=!<]|\\[1-9]", DIGEST_PATTERN)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=80))
def test_pattern_agrees_with_validate_digest_on_other_algorithms(text: str) -> None:
    """For algorithms without fixed lengths, the grammar alone decides."""
    value = "x1." + text
    accepted = re.fullmatch(DIGEST_PATTERN, value) is not None
    try:
        validate_digest(value)
    except ValueError:
        assert not accepted
    else:
        assert accepted


# --- marks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "state"),
    [
        (None, MarkState.UNMARKED),
        ("true", MarkState.MARKED),
        ("True", MarkState.MARKED),
        (" true", MarkState.MARKED),
        ("TRUE\n", MarkState.MARKED),
        ("\ttRuE ", MarkState.MARKED),
        ("false", MarkState.UNMARKED),
        (" FALSE ", MarkState.UNMARKED),
        ("", MarkState.INVALID),
        ("yes", MarkState.INVALID),
        ("1", MarkState.INVALID),
        ("t rue", MarkState.INVALID),
        ("truee", MarkState.INVALID),
    ],
)
def test_parse_mark(value: str | None, state: MarkState) -> None:
    assert parse_mark(value) is state


def test_mark_reaches_the_record() -> None:
    obj = manifest()
    obj["metadata"]["annotations"] = {MARK_ANNOTATION: " True "}
    image = ContainerImage.from_manifest(obj)
    assert image.mark is MarkState.MARKED
    assert image.to_record().marked is True
    obj["metadata"]["annotations"] = {MARK_ANNOTATION: "yes"}
    assert ContainerImage.from_manifest(obj).to_record().marked is False


# --- manifests ------------------------------------------------------------------------------


def test_a_good_manifest() -> None:
    obj = manifest(image="registry.example.com/myapp:v1", digest=SHA512, layers=[SHA256, SHA256])
    image = ContainerImage.from_manifest(obj)
    assert image.key == ("team-a", "myapp-v1")
    record = image.to_record()
    assert record.layers == (SHA256, SHA256)  # repeats inside one list are allowed
    assert (record.image, record.digest) == ("registry.example.com/myapp:v1", SHA512)
    assert record.key == image.key


def test_namespace_defaults() -> None:
    obj = manifest()
    del obj["metadata"]["namespace"]
    assert ContainerImage.from_manifest(obj).namespace == "default"
    assert ContainerImage.from_manifest(obj, default_namespace="ci").namespace == "ci"


def test_status_is_ignored_so_kubectl_output_reads_back() -> None:
    obj = manifest()
    obj["status"] = {"layerCount": 99}
    assert ContainerImage.from_manifest(obj).spec.layers == [SHA256]


def test_layer_cap() -> None:
    ContainerImage.from_manifest(manifest(layers=[SHA256] * LAYER_CAP))
    error = error_of(manifest(layers=[SHA256] * (LAYER_CAP + 1)))
    assert error.field == "spec.layers"
    assert f"at most {LAYER_CAP}" in str(error)


def test_error_names_file_object_field_and_value() -> None:
    error = error_of(manifest(layers=[SHA256, SHA256, "sha256:xyz"]))
    assert (error.source, error.obj, error.field, error.value) == (
        "examples/app.yaml",
        "team-a/myapp-v1",
        "spec.layers[2]",
        "sha256:xyz",
    )
    assert str(error) == (
        'examples/app.yaml: ContainerImage team-a/myapp-v1: spec.layers[2]: "sha256:xyz" is not '
        "a valid digest: sha256 needs 64 lower-case hex characters, got 3"
    )


def test_unnamed_documents_are_named_by_position() -> None:
    obj = manifest()
    del obj["metadata"]["name"]
    error = error_of(obj, label="document 3")
    assert error.obj == "document 3"
    assert str(error).startswith("examples/app.yaml: document 3: metadata.name: ")


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda o: o["spec"].update(layers=[]), "spec.layers", "at least one layer"),
        (lambda o: o["spec"].pop("layers"), "spec.layers", "required"),
        (lambda o: o["spec"].update(layers="sha256:abc"), "spec.layers", "expected a list"),
        (lambda o: o["spec"].update(layers={"a": 1}), "spec.layers", "expected a list"),
        (lambda o: o["spec"].update(layers=[5]), "spec.layers[0]", "not a valid digest"),
        (lambda o: o["spec"].update(layers=[[SHA256]]), "spec.layers[0]", "not a valid digest"),
        (lambda o: o["spec"].update(digest="sha256:1"), "spec.digest", "needs 64"),
        (lambda o: o["spec"].update(digest=7), "spec.digest", "not a valid digest"),
        (lambda o: o["spec"].update(image=42), "spec.image", "expected a string"),
        (lambda o: o["spec"].update(image="my app"), "spec.image", "not an image reference"),
        (lambda o: o["spec"].update(layer=[SHA256]), "spec.layer", "unknown field"),
        (lambda o: o.update(spec=[SHA256]), "spec", "expected a mapping"),
        (lambda o: o.pop("spec"), "spec", "expected a mapping"),
        (lambda o: o.update(metadata="x"), "metadata", "expected a mapping"),
        (lambda o: o["metadata"].update(name=3), "metadata.name", "non-empty string"),
        (lambda o: o["metadata"].update(name="My_App"), "metadata.name", "not a valid name"),
        (lambda o: o["metadata"].update(name="a" * 254), "metadata.name", "at most 253"),
        (lambda o: o["metadata"].update(namespace=["a"]), "metadata.namespace", "namespace"),
        (lambda o: o["metadata"].update(namespace="Team"), "metadata.namespace", "namespace"),
        (lambda o: o["metadata"].update(annotations=["a"]), "metadata.annotations", "mapping"),
        (
            lambda o: o["metadata"].update(annotations={MARK_ANNOTATION: True}),
            'metadata.annotations["anchore.user/marked_base_image"]',
            'quote it: "true"',
        ),
        (lambda o: o["metadata"].update(annotations={1: "x"}), "metadata.annotations", "key 1"),
        (lambda o: o.update(kind="Pod"), "kind", "expected ContainerImage"),
        (lambda o: o.update(apiVersion="imageancestry.io/v9"), "apiVersion", "v1alpha1"),
    ],
)
def test_bad_manifests(change: Any, field: str, words: str) -> None:
    obj = copy.deepcopy(manifest())
    change(obj)
    error = error_of(obj)
    assert error.field == field
    assert words in str(error)
    assert str(error).startswith("examples/app.yaml: ")


def test_several_problems_report_the_first_and_count_the_rest() -> None:
    error = error_of(manifest(layers=["x", "y", "z"]))
    assert error.field == "spec.layers[0]"
    assert "and 2 more problem(s)" in str(error)


def test_not_a_mapping() -> None:
    error = error_of([manifest()])
    assert error.field is None
    assert "expected a Kubernetes object (a mapping), got [" in str(error)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "apiVersion": st.just("imageancestry.io/v1alpha1") | json_values,
            "kind": st.just("ContainerImage") | json_values,
            "metadata": st.fixed_dictionaries(
                {}, optional={"name": st.just("a") | json_values, "annotations": json_values}
            )
            | json_values,
            "spec": st.fixed_dictionaries(
                {},
                optional={
                    "layers": st.lists(st.just(SHA256) | json_values, max_size=3) | json_values,
                    "image": json_values,
                    "digest": json_values,
                },
            )
            | json_values,
        },
    )
    | json_values
)
def test_junk_gives_a_manifest_error_or_an_image(obj: Any) -> None:
    """Whatever the document holds, the only failure is a ManifestError."""
    try:
        image = ContainerImage.from_manifest(obj, "junk.yaml")
    except ManifestError as error:
        assert str(error).startswith("junk.yaml: ")
    else:
        assert image.spec.layers


def test_deeply_nested_junk() -> None:
    deep: Any = SHA256
    for _ in range(5000):
        deep = [deep]
    error = error_of(manifest(layers=deep))
    assert error.field is not None and error.field.startswith("spec.layers")


def test_unicode_everywhere() -> None:
    error = error_of(manifest(layers=["sha256:" + "ä" * 64]))
    assert '"sha256:ää' in str(error)
    obj = manifest()
    obj["metadata"]["name"] = "ünïcode"
    assert error_of(obj).field == "metadata.name"


def test_spec_model_directly() -> None:
    spec = ContainerImageSpec.model_validate({"layers": [SHA256]})
    assert spec.image is None and spec.digest is None


def test_record_manifest_round_trip() -> None:
    """from_record/to_manifest give back what from_manifest/to_record read."""
    layers = (f"sha256:{1:064x}", f"sha256:{2:064x}", f"sha256:{1:064x}")
    for record in (
        ImageRecord("team-a", "app", layers, "r.example/app:1", f"sha256:{9:064x}", True),
        ImageRecord("default", "bare", layers[:1]),
    ):
        manifest = ContainerImage.from_record(record).to_manifest()
        assert ContainerImage.from_manifest(manifest).to_record() == record
        assert ("annotations" in manifest["metadata"]) is record.marked
        assert ("image" in manifest["spec"]) is (record.image is not None)
