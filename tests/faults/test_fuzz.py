"""Bad input, fuzzed: hypothesis-made manifests through ``image-ancestry compute`` (in process
and as the console script), through the webhook and schema of the real API server, and
truncated archives through ``import``.

Every example is a valid forest with at most one fault put in at a known place (a junk
digest, an empty or oversized list, a value of the wrong type, deeply nested junk, a unicode
name, an unknown field), so the test knows which field the refusal must name. Valid examples
must exit 0 with the statuses the naive reference computes. Never a traceback; never a 500.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_ancestry.cli import main
from image_ancestry.model import MARK_ANNOTATION
from tests.clusters import KubectlError, TestCluster
from tests.faults.conftest import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    empty_namespace,
    new_namespace,
    wait_served,
)
from tests.importer.builders import APP_LAYERS, BASE_LAYERS, build_image, write_archive
from tests.naive_ancestry import all_statuses
from tests.operator.conftest import crds

__all__ = ["crds"]

# The contract's digest grammar (OCI) and registered lengths, written out independently of
# the code under test, to make junk that is certainly not a digest.
_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_LENGTHS = {"sha256": 64, "sha512": 128}
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def is_digest(value: object) -> bool:
    if not isinstance(value, str) or not _GRAMMAR.fullmatch(value):
        return False
    algorithm, _, encoded = value.partition(":")
    length = _LENGTHS.get(algorithm)
    return length is None or (len(encoded) == length and bool(re.fullmatch("[a-f0-9]+", encoded)))


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
# JSON, the wire format of every client, has no NaN or infinity: kubectl would refuse the
# document before the API server saw it.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), text
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)
junk_digests = st.one_of(
    text.filter(lambda s: not is_digest(s)),
    st.integers(0, 200).filter(lambda n: n != 64).map(lambda n: "sha256:" + "a" * n),
    st.just("sha256:" + "A" * 64),
    st.just("sha512:" + "a" * 64),
    st.just("md5:" + "é" * 8),
)
junk_names = text.filter(lambda s: not (len(s) <= 253 and _DNS_SUBDOMAIN.fullmatch(s))).filter(bool)


def deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def forest() -> list[dict[str, Any]]:
    """Three valid images in a chain, the middle one marked."""
    docs = []
    for i, name in enumerate(("base", "mid", "top")):
        doc = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ContainerImage",
            "metadata": {"name": name, "namespace": "fuzz"},
            "spec": {
                "image": f"registry.example.com/{name}:1",
                "layers": [digest(n) for n in range(i + 1)],
            },
        }
        docs.append(doc)
    docs[1]["metadata"]["annotations"] = {MARK_ANNOTATION: "true"}
    return docs


Case = tuple[list[dict[str, Any]], int, str | None]
not_a_string = junk.filter(lambda v: v is not None and not isinstance(v, str))


@st.composite
def cases(draw: st.DrawFn, *, cluster: bool = False) -> Case:
    """(manifests, which one is changed, the field the refusal must name); None: the
    manifests are valid."""
    docs = forest()
    index = draw(st.integers(0, 2))
    doc = docs[index]
    meta, spec = doc["metadata"], doc["spec"]
    kinds = [
        "layer",
        "empty",
        "huge",
        "layers-type",
        "digest",
        "image-type",
        "unknown",
        "name",
        "annotation-type",
        "spec-junk",
        "deep",
        "mark",
    ]
    if not cluster:
        kinds += ["valid", "namespace", "duplicate"]
    kind = draw(st.sampled_from(kinds))
    if kind == "layer":
        i = draw(st.integers(0, len(spec["layers"]) - 1))
        spec["layers"][i] = draw(junk_digests)
        return docs, index, f"spec.layers[{i}]"
    if kind == "empty":
        spec["layers"] = []
        return docs, index, "spec.layers"
    if kind == "huge":
        spec["layers"] = [digest(n) for n in range(draw(st.integers(257, 2000)))]
        return docs, index, "spec.layers"
    if kind == "layers-type":
        spec["layers"] = draw(junk.filter(lambda v: not isinstance(v, list)))
        return docs, index, "spec.layers"
    if kind == "digest":
        spec["digest"] = draw(junk_digests)
        return docs, index, "spec.digest"
    if kind == "image-type":
        spec["image"] = draw(not_a_string)
        return docs, index, "spec.image"
    if kind == "unknown":
        field = draw(
            st.from_regex(r"[a-z][a-zA-Z]{0,10}", fullmatch=True).filter(
                lambda f: f not in ("image", "digest", "layers")
            )
        )
        spec[field] = draw(junk)
        return docs, index, f"spec.{field}"
    if kind == "name":
        meta["name"] = draw(junk_names)
        return docs, index, "name" if cluster else "metadata.name"
    if kind == "annotation-type":
        key = draw(st.from_regex(r"[a-z]{1,10}(\.io/[a-z]{1,10})?", fullmatch=True))
        meta["annotations"] = {key: draw(not_a_string)}
        where = "metadata.annotations"  # the API server's decoder names no key
        return docs, index, where if cluster else f"{where}[{json.dumps(key)}]"
    if kind == "spec-junk":
        doc["spec"] = draw(junk.filter(lambda v: not isinstance(v, dict)))
        return docs, index, "spec"
    if kind == "deep":
        spec["layers"] = deep(draw(st.integers(50, 900)))  # json.dumps itself recurses
        return docs, index, "spec.layers"
    if kind == "mark":
        value = draw(text)
        meta["annotations"] = {MARK_ANNOTATION: value}
        if not cluster or value.strip().lower() not in ("true", "false"):
            return docs, index, MARK_ANNOTATION if cluster else None
        meta["annotations"] = {MARK_ANNOTATION: value + "?"}  # the webhook must refuse
        return docs, index, MARK_ANNOTATION
    if kind == "namespace":
        meta["namespace"] = draw(
            junk.filter(
                lambda v: not (isinstance(v, str) and _DNS_LABEL.fullmatch(v)) and v is not None
            )
        )
        return docs, index, "metadata.namespace"
    if kind == "duplicate":
        docs.append(json.loads(json.dumps(doc)))
        return docs, index, f"fuzz/{meta['name']}"
    return docs, index, None


# --- compute, in process ----------------------------------------------------------------------


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases())
def test_compute_names_the_field_or_computes(
    case: Case,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    docs, _, field = case
    path = tmp_path / f"{uuid.uuid4().hex}.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    capsys.readouterr()
    code = main(["compute", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if field is None:
        assert code == 0, err
        for d in docs:
            value = d["metadata"].get("annotations", {}).get(MARK_ANNOTATION)
            if value is not None and value.strip().lower() not in ("true", "false"):
                assert MARK_ANNOTATION in err, err  # rule 5: the CLI warns
        assert_statuses(docs, out)
    else:
        assert code == 2, (code, err)
        assert out == ""
        assert err.startswith("error: ") and str(path) in err, err
        assert field in err, (field, err)


def assert_statuses(docs: list[dict[str, Any]], out: str) -> None:
    from image_ancestry.model import ContainerImage

    records = [ContainerImage.from_manifest(d).to_record() for d in docs]
    report = json.loads(out)
    got = {(i["namespace"], i["name"]): i["status"] for i in report["items"]}
    assert got == all_statuses(records)


# --- compute, the console script ----------------------------------------------------------------


HOSTILE = {
    "deep-json.json": "[" * 100_000,
    "deep-yaml.yaml": "a: " + "[" * 50_000,
    "binary.yaml": "\x00\x01\x02 not yaml \x7f",
    "tabs.yaml": "kind: ContainerImage\n\tmetadata: {}\n",
    "unicode.json": json.dumps(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ContainerImage",
            "metadata": {"name": "Ünïcødé-☃"},
            "spec": {"layers": [digest(1)]},
        }
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_the_console_script_exits_2_without_a_traceback(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(HOSTILE[name])
    script = Path(sys.executable).with_name("image-ancestry")
    result = subprocess.run(
        [str(script), "compute", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.startswith("error: ") and str(path) in result.stderr


# --- import, truncated archives --------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int]:
    """A ``docker save`` archive of two images, and the offset where its last member ends (a
    cut past it leaves a complete archive: only the end-of-archive zero blocks are missing)."""
    base = build_image(BASE_LAYERS)
    app = build_image(APP_LAYERS)
    path = write_archive(
        tmp_path_factory.mktemp("archive") / "save.tar",
        [(base, ["r.example/base:1"]), (app, ["r.example/app:1"])],
    )
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    complete = last.offset_data + -(-last.size // 512) * 512
    return path.read_bytes(), complete


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_import_of_a_truncated_archive_fails_cleanly(
    cut: float,
    archive: tuple[bytes, int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, complete = archive
    path = tmp_path / f"{uuid.uuid4().hex}.tar"
    size = int(len(data) * cut)
    path.write_bytes(data[:size])
    source = f"docker-archive:{path}"
    capsys.readouterr()
    code = main(["import", "-q", source])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if size >= complete:  # every member whole: a complete archive
        assert code == 0 and out.count("kind: ContainerImage") == 2, (code, err)
    else:
        assert code == 1, (size, complete, code, err)
        assert out == "" and f"{source}: " in err, err


# --- through the webhook and schema of the real API server ----------------------------------


@pytest.fixture(scope="module")
def served(
    crds: TestCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestCluster, str, dict[str, Any], dict[str, str]]]:
    """An operator serving the webhook, a namespace ``fuzz-*`` holding the valid forest;
    yields (cluster, namespace, what is stored, the resourceVersions of a moment)."""
    system = new_namespace(crds, "fuzz-system")
    namespace = new_namespace(crds, "fuzz")
    op = OperatorProcess(
        crds.kubeconfig_path,
        system,
        tmp_path_factory.mktemp("fuzz") / "operator.log",
        "fuzz",
        "local",
    ).start()
    try:
        wait_served(crds, op, namespace)
        for doc in forest():
            doc["metadata"]["namespace"] = namespace
            crds.kubectl("create", "-f", "-", input=json.dumps(doc))
        stored = versions(crds, namespace)
        resource_versions = {name: current_version(crds, namespace, name) for name in stored}
        yield crds, namespace, stored, resource_versions
    finally:
        op.stop()
        crds.kubectl(
            "delete",
            "validatingwebhookconfiguration",
            f"image-ancestry-local-{system}",
            "--ignore-not-found",
        )
        empty_namespace(crds, namespace)
        for ns in (system, namespace):
            crds.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def versions(cluster: TestCluster, namespace: str) -> dict[str, Any]:
    """What people wrote of every stored object (the operator's status writes aside): its
    generation, spec and annotations, by name."""
    items = json.loads(cluster.kubectl("get", PLURAL, "-n", namespace, "-o", "json"))["items"]
    return {
        i["metadata"]["name"]: (
            i["metadata"]["generation"],
            i["spec"],
            i["metadata"].get("annotations"),
        )
        for i in items
    }


@pytest.mark.cluster
@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases(cluster=True), update=st.booleans())
def test_the_api_server_refuses_with_the_field_named_and_stores_nothing(
    case: Case,
    update: bool,
    served: tuple[TestCluster, str, dict[str, Any], dict[str, str]],
) -> None:
    cluster, namespace, stored, resource_versions = served
    docs, index, field = case
    assert field is not None
    doc = docs[index]
    doc["metadata"]["namespace"] = namespace
    name = doc["metadata"]["name"]
    if update and isinstance(name, str) and name in stored:
        doc["metadata"]["resourceVersion"] = resource_versions[name]  # may be stale: 409
        verb = "replace"
    else:
        if isinstance(doc["metadata"].get("name"), str) and doc["metadata"]["name"] in stored:
            doc["metadata"]["name"] = f"new-{uuid.uuid4().hex[:8]}"
        verb = "create"
    error = refusal(cluster, verb, doc)
    assert "InternalError" not in error and "Internal error" not in error, error
    if "(Conflict)" in error:  # a status write moved the resourceVersion: update it again
        doc["metadata"]["resourceVersion"] = current_version(cluster, namespace, name)
        error = refusal(cluster, verb, doc)
    assert field in error, (field, error)
    assert versions(cluster, namespace) == stored  # nothing already stored changed


def refusal(cluster: TestCluster, verb: str, doc: dict[str, Any]) -> str:
    try:
        out = cluster.kubectl(verb, "-f", "-", input=json.dumps(doc))
    except KubectlError as exc:
        return exc.stderr
    raise AssertionError(f"kubectl {verb} admitted it: {out} {json.dumps(doc)[:500]}")


def current_version(cluster: TestCluster, namespace: str, name: str) -> str:
    obj = json.loads(cluster.kubectl("get", PLURAL, name, "-n", namespace, "-o", "json"))
    return str(obj["metadata"]["resourceVersion"])
