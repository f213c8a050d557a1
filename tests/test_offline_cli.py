"""``image-ancestry compute`` and ``tree``: every input form, every error, the exit codes."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from image_ancestry.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHA = "sha256:" + "ab" * 32


def layer(i: int) -> str:
    return f"sha256:{i:064x}"


def image_doc(
    name: str, layers: list[int], namespace: str | None = "ns", **extra: Any
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata.update(extra.pop("metadata", {}))
    return {
        "apiVersion": "imageancestry.io/v1alpha1",
        "kind": "ContainerImage",
        "metadata": metadata,
        "spec": {"layers": [layer(i) for i in layers], **extra},
    }


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, docs: list[Any]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def statuses(out: str) -> dict[tuple[str, str], dict[str, Any]]:
    report = json.loads(out)
    assert report["apiVersion"] == "imageancestry.io/v1alpha1"
    assert report["kind"] == "AncestryReport"
    return {(item["namespace"], item["name"]): item["status"] for item in report["items"]}


# --- input forms ----------------------------------------------------------------------------


def test_multi_document_yaml_and_other_kinds_ignored(tmp_path: Path, capsys: Any) -> None:
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    path = write(tmp_path / "all.yaml", [image_doc("a", [1]), other, None, image_doc("b", [1, 2])])
    code, out, err = run(capsys, "compute", str(path))
    assert (code, err) == (0, "")
    result = statuses(out)
    assert set(result) == {("ns", "a"), ("ns", "b")}
    assert result[("ns", "b")]["parent"] == {"namespace": "ns", "name": "a"}


def test_json_file_and_kind_list(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "list.json"
    listing = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [image_doc("a", [1]), image_doc("b", [1, 2])],
    }
    path.write_text(json.dumps(listing))
    code, out, _ = run(capsys, "compute", str(path))
    assert code == 0
    assert statuses(out)[("ns", "b")]["ancestorCount"] == 1


def test_typed_list_kind_in_yaml(tmp_path: Path, capsys: Any) -> None:
    listing = {
        "apiVersion": "imageancestry.io/v1alpha1",
        "kind": "ContainerImageList",
        "items": [image_doc("a", [1]), image_doc("b", [1, 2])],
    }
    code, out, _ = run(capsys, "compute", str(write(tmp_path / "l.yml", [listing])))
    assert code == 0
    assert len(statuses(out)) == 2


def test_directories_recursively_and_other_files_skipped(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "deep" / "er").mkdir(parents=True)
    write(tmp_path / "a.yaml", [image_doc("a", [1])])
    write(tmp_path / "deep" / "er" / "b.yml", [image_doc("b", [1, 2])])
    (tmp_path / "deep" / "c.json").write_text(json.dumps(image_doc("c", [1, 2, 3])))
    (tmp_path / "deep" / "notes.txt").write_text("not: [valid")  # not a manifest suffix
    code, out, _ = run(capsys, "compute", str(tmp_path))
    assert code == 0
    assert statuses(out)[("ns", "c")]["ancestorCount"] == 2


def test_stdin_yaml_and_json(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    text = yaml.safe_dump_all([image_doc("a", [1]), image_doc("b", [1, 2])])
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    code, out, _ = run(capsys, "compute", "-")
    assert code == 0 and len(statuses(out)) == 2
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(image_doc("a", [1]))))
    code, out, _ = run(capsys, "compute", "-")
    assert code == 0 and len(statuses(out)) == 1


def test_stdin_with_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(yaml.safe_dump(image_doc("b", [1, 2]))))
    code, out, _ = run(
        capsys, "compute", str(write(tmp_path / "a.yaml", [image_doc("a", [1])])), "-"
    )
    assert code == 0
    assert statuses(out)[("ns", "b")]["parent"]["name"] == "a"


def test_missing_namespace_is_default(tmp_path: Path, capsys: Any) -> None:
    path = write(tmp_path / "a.yaml", [image_doc("a", [1], namespace=None)])
    code, out, _ = run(capsys, "compute", str(path))
    assert code == 0
    assert list(statuses(out)) == [("default", "a")]


def test_items_sorted_by_namespace_then_name(tmp_path: Path, capsys: Any) -> None:
    docs = [image_doc("b", [1], "z"), image_doc("a", [2], "z"), image_doc("c", [3], "a")]
    code, out, _ = run(capsys, "compute", str(write(tmp_path / "x.yaml", docs)))
    assert code == 0
    assert list(statuses(out)) == [("a", "c"), ("z", "a"), ("z", "b")]


def test_yaml_output_equals_json_output(capsys: Any) -> None:
    _, as_json, _ = run(capsys, "compute", str(EXAMPLES))
    code, as_yaml, _ = run(capsys, "compute", "-o", "yaml", str(EXAMPLES))
    assert code == 0
    assert yaml.safe_load(as_yaml) == json.loads(as_json)


def test_table_output(capsys: Any) -> None:
    code, out, _ = run(capsys, "compute", "-o", "table", str(EXAMPLES))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "IMAGE", "LAYERS", "PARENT", "BASE", "REASON"]
    rows = {tuple(line.split()[:2]): line.split() for line in lines[1:]}
    assert rows[("platform", "debian-10")][3:] == ["2", "<none>", "<none>", "<none>"]
    assert rows[("team-a", "myapp-v1")][3:] == [
        "4",
        "registry.example.com/mynode:latest",
        "registry.example.com/mynode:latest",
        "MarkedBaseImage",
    ]
    # Columns line up: every row starts its IMAGE column where the header does.
    start = lines[0].index("IMAGE")
    assert all(line[start - 1] == " " and line[start] != " " for line in lines[1:])


def test_table_falls_back_to_names_without_spec_image(tmp_path: Path, capsys: Any) -> None:
    code, out, _ = run(
        capsys,
        "compute",
        "-o",
        "table",
        str(write(tmp_path / "a.yaml", [image_doc("a", [1]), image_doc("b", [1, 2])])),
    )
    assert code == 0
    assert out.splitlines()[2].split() == [
        "ns",
        "b",
        "<none>",
        "2",
        "ns/a",
        "ns/a",
        "ClosestAncestor",
    ]


def test_disable_user_base_image(capsys: Any) -> None:
    _, on, _ = run(capsys, "compute", str(EXAMPLES))
    _, off, _ = run(capsys, "compute", "--disable-user-base-image", str(EXAMPLES))
    key = ("team-a", "myapp-v1")
    assert statuses(on)[key]["baseImage"]["reason"] == "MarkedBaseImage"
    assert statuses(off)[key]["baseImage"]["reason"] == "ClosestAncestor"


def test_tree(capsys: Any) -> None:
    code, out, err = run(capsys, "tree", str(EXAMPLES))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("platform/debian-10  ")
    assert lines[1].startswith("|-- platform/mynode-latest  ") and "[marked base image]" in lines[1]
    assert lines[2].startswith("|   `-- team-a/myapp-v1  ")
    assert "base: platform/mynode-latest (MarkedBaseImage)" in lines[2]
    assert lines[3].startswith("`-- team-a/mypython-latest  ")
    assert "1 marked base image" in out and "closest marked ancestor" in out


def test_tree_with_the_flag_off_says_so(capsys: Any) -> None:
    code, out, _ = run(capsys, "tree", "--disable-user-base-image", str(EXAMPLES))
    assert code == 0
    assert "[marked base image, ignored]" in out
    assert "MarkedBaseImage" not in out
    assert "Marks ignored (--disable-user-base-image)" in out


def test_tree_shows_twins_and_several_roots(tmp_path: Path, capsys: Any) -> None:
    docs = [
        image_doc("r1", [1]),
        image_doc("r2", [9]),
        image_doc("t1", [1, 2]),
        image_doc("t2", [1, 2]),
        image_doc("leaf", [1, 2, 3]),
    ]
    code, out, _ = run(capsys, "tree", str(write(tmp_path / "a.yaml", docs)))
    assert code == 0
    lines = out.splitlines()[:5]
    names = [line[: line.index(" ", line.index("ns/"))] for line in lines]
    assert names == ["ns/r1", "|-- ns/t1", "|   `-- ns/leaf", "`-- ns/t2", "ns/r2"]
    assert lines[3].endswith("(same layers as ns/t1)")
    assert "same layers" not in lines[1]


# --- errors ---------------------------------------------------------------------------------


def assert_input_error(capsys: Any, *argv: str) -> str:
    """Exit 2, nothing on stdout, one ``error:`` line on stderr; returns that line."""
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    return err


def test_bad_digest(tmp_path: Path, capsys: Any) -> None:
    bad = image_doc("myapp-v1", [1], "team-a")
    bad["spec"]["layers"].append("sha256:xyz")
    path = write(tmp_path / "app.yaml", [image_doc("ok", [1]), bad])
    err = assert_input_error(capsys, "compute", str(path))
    assert f"{path}: ContainerImage team-a/myapp-v1: spec.layers[1]: " in err
    assert "sha256 needs 64 lower-case hex characters" in err


def test_no_layers(tmp_path: Path, capsys: Any) -> None:
    path = write(tmp_path / "app.yaml", [image_doc("a", [])])
    err = assert_input_error(capsys, "compute", "-o", "table", str(path))
    assert "ContainerImage ns/a: spec.layers: needs at least one layer digest" in err


def test_duplicate_names_both_files(tmp_path: Path, capsys: Any) -> None:
    first = write(tmp_path / "a.yaml", [image_doc("same", [1])])
    second = write(tmp_path / "b.yaml", [image_doc("other", [2]), image_doc("same", [3])])
    err = assert_input_error(capsys, "compute", str(first), str(second))
    assert str(first) in err and str(second) in err and "ns/same" in err and "duplicate" in err


def test_yaml_that_does_not_parse(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: v1\nkind: ContainerImage\nmetadata: {name: [unclosed\n")
    err = assert_input_error(capsys, "tree", str(path))
    assert f"{path}: line 4" in err and "YAML does not parse" in err


def test_json_that_does_not_parse(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"kind": "ContainerImage",\n "x": }')
    err = assert_input_error(capsys, "compute", str(path))
    assert f"{path}: line 2, column" in err and "JSON does not parse" in err


def test_document_that_is_not_an_object(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("---\n- a\n- b\n")
    err = assert_input_error(capsys, "compute", str(path))
    assert f"{path}: document 1 (line 2): expected a Kubernetes object" in err


def test_unnamed_bad_document_named_by_position(tmp_path: Path, capsys: Any) -> None:
    nameless = image_doc("x", [1])
    del nameless["metadata"]["name"]
    path = write(tmp_path / "a.yaml", [image_doc("a", [1]), nameless])
    err = assert_input_error(capsys, "compute", str(path))
    assert f"{path}: document 2 (line " in err and "metadata.name" in err


def test_bad_list_item(tmp_path: Path, capsys: Any) -> None:
    listing = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [image_doc("a", [1]), image_doc("b", [1, 2], digest="sha512:00")],
    }
    path = tmp_path / "list.json"
    path.write_text(json.dumps(listing))
    err = assert_input_error(capsys, "compute", str(path))
    assert f"{path}: ContainerImage ns/b: spec.digest" in err


def test_missing_path(tmp_path: Path, capsys: Any) -> None:
    err = assert_input_error(capsys, "compute", str(tmp_path / "nope.yaml"))
    assert "nope.yaml: no such file or directory" in err


def test_not_utf8(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in assert_input_error(capsys, "compute", str(path))


def test_usage_errors_exit_2(capsys: Any) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["compute"])
    assert caught.value.code == 2
    with pytest.raises(SystemExit) as caught:
        main(["compute", "-o", "xml", str(EXAMPLES)])
    assert caught.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize("value", ["yes", " TRUE  x", ""])
def test_annotation_that_marks_nothing_warns(tmp_path: Path, capsys: Any, value: str) -> None:
    docs = [
        image_doc("a", [1], metadata={"annotations": {"anchore.user/marked_base_image": value}}),
        image_doc("b", [1, 2]),
    ]
    code, out, err = run(capsys, "compute", str(write(tmp_path / "a.yaml", docs)))
    assert code == 0
    assert err.startswith("warning: ") and "ContainerImage ns/a" in err and "marks nothing" in err
    assert statuses(out)[("ns", "b")]["baseImage"]["reason"] == "ClosestAncestor"


# --- the installed console script -----------------------------------------------------------


def test_console_script(tmp_path: Path) -> None:
    script = shutil.which("image-ancestry", path=str(Path(sys.executable).parent))
    assert script is not None, "install the package: pip install -e . --no-deps"
    ok = subprocess.run(
        [script, "compute", "-o", "json", str(EXAMPLES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert len(statuses(ok.stdout)) == 4
    bad = write(tmp_path / "bad.yaml", [image_doc("a", [])])
    failed = subprocess.run(
        [script, "compute", str(bad)], capture_output=True, text=True, check=False
    )
    assert (failed.returncode, failed.stdout) == (2, "")
    assert "spec.layers" in failed.stderr


def test_yaml_output_has_no_anchors_for_shared_parts(tmp_path: Path, capsys: Any) -> None:
    """Twins share their ancestors in the engine's bulk walk; YAML must still spell them out."""
    docs = [image_doc("base", [1]), image_doc("t1", [1, 2]), image_doc("t2", [1, 2])]
    code, out, _ = run(capsys, "compute", "-o", "yaml", str(write(tmp_path / "a.yaml", docs)))
    assert code == 0
    assert "&id" not in out and "*id" not in out
    items = {item["name"]: item["status"] for item in yaml.safe_load(out)["items"]}
    assert items["t1"] == items["t2"] and items["t1"]["parent"]["name"] == "base"


def test_no_images_is_an_empty_report_with_a_warning(tmp_path: Path, capsys: Any) -> None:
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    code, out, err = run(capsys, "compute", str(write(tmp_path / "cm.yaml", [other])))
    assert code == 0
    assert statuses(out) == {}
    assert err.startswith("warning: no ContainerImage manifests found in ")


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        (
            "alias.yaml",
            "kind: ContainerImage\napiVersion: imageancestry.io/v1alpha1\n"
            "metadata: {name: a}\nspec:\n  layers: &x [*x]\n",
            "spec.layers[0]",
        ),
        ("tag.yaml", "!!python/object:os.system {}\n", "could not determine a constructor"),
        (
            "huge.yaml",
            "kind: ContainerImage\nspec: {layers: [" + "9" * 5000 + "]}\n",
            "document 1: a value cannot be read",
        ),
        (
            "huge.json",
            '{"kind": "ContainerImage", "n": ' + "9" * 5000 + "}",
            "a value cannot be read",
        ),
        ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("deep.yaml", "[" * 20_000 + "]" * 20_000, "YAML does not parse"),
    ],
)
def test_hostile_files(tmp_path: Path, capsys: Any, name: str, text: str, words: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    err = assert_input_error(capsys, "compute", str(path))
    assert str(path) in err and words in err
