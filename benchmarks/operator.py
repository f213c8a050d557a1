"""Benchmark of the operator on the local control plane. Prints figures, asserts nothing.

    .venv/bin/python benchmarks/operator.py                   # N = 1000 and 5000
    .venv/bin/python benchmarks/operator.py --sizes 1000 5000 10000
    .venv/bin/python benchmarks/operator.py --kubeconfig FILE  # an existing cluster

For each N: N ContainerImages (the engine benchmark's realistic forest, over 50 namespaces)
are stored with wrong statuses. Then, in the same run and on the same API server:

- **floor**: one plain client (the kubernetes package, raw responses, a pool of 8
  connections) writes the N right statuses as merge patches of the status subresource from
  8 threads: the least work any operator has to do;
- the statuses are made wrong again, and **operator**: seconds from starting
  ``image-ancestry run`` (a new process: imports, login, listing, index, writes) until a
  watch in this process has seen every image's status right; and the operator's resident
  memory (VmRSS, and VmHWM: the peak) once converged.

The wrong statuses carry no ``Ready`` condition (an operator never computed them), so no
``BaseImageChanged`` Events are due: both sides write exactly N status patches.
Issue 4's targets: operator within 1.5 times the floor; under 200 MiB at 5k.
"""

# ruff: noqa: E402  (sys.path is fixed first: see below)
from __future__ import annotations

import sys

# This file is named like the standard library's ``operator``: run as a script, its folder
# comes first on sys.path and would shadow it. Drop the folder before importing anything.
sys.path[:] = [p for p in sys.path if p not in ("", __file__.rpartition("/")[0] or ".")]

import argparse
import importlib.util
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from image_ancestry.engine import AncestryIndex, ImageKey, ImageRecord
from image_ancestry.model import ContainerImage

# benchmarks/engine.py's realistic forest, loaded by path (benchmarks/ is no package).
_spec = importlib.util.spec_from_file_location(
    "engine_benchmark", REPO / "benchmarks" / "engine.py"
)
assert _spec is not None and _spec.loader is not None
_engine_benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_engine_benchmark)
forest = _engine_benchmark.forest

GROUP, VERSION, PLURAL = "imageancestry.io", "v1alpha1", "containerimages"
WRONG = {"layerCount": 0, "ancestorCount": 0, "ancestors": []}
CONTRACT_KEYS = ("layerCount", "ancestorCount", "ancestors", "parent", "baseImage")


def log(message: str) -> None:
    print(message, flush=True)


def api_client(kubeconfig: str, pool: int = 8) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = pool
    return client.ApiClient(cfg)


def in_threads(fn: Callable[[Any], None], items: Iterable[Any], threads: int = 8) -> float:
    items = list(items)
    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(fn, items):
            pass
    return time.monotonic() - started


def expected_statuses(records: list[ImageRecord]) -> dict[ImageKey, dict[str, Any]]:
    index = AncestryIndex.build(records)
    return {
        key: {k: v for k, v in status.items() if v is not None} for key, status in index.statuses()
    }


def is_right(obj: dict[str, Any], expected: dict[ImageKey, dict[str, Any]]) -> bool:
    meta = obj["metadata"]
    want = expected.get((meta["namespace"], meta["name"]))
    status = obj.get("status") or {}
    return want is not None and all(status.get(k) == want.get(k) for k in CONTRACT_KEYS)


def rss_kib(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


class Convergence:
    """A watch on every ContainerImage: notes the moment all of ``expected`` are right."""

    def __init__(self, api: Any, expected: dict[ImageKey, dict[str, Any]], version: str) -> None:
        self.api = api
        self.expected = expected
        self.version = version
        self.wrong = set(expected)
        self.done_at: float | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Convergence:
        self.thread.start()
        return self

    def _run(self) -> None:
        from kubernetes import client, watch

        custom = client.CustomObjectsApi(self.api)
        while not self._stop.is_set() and self.wrong:
            stream = watch.Watch().stream(
                custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                PLURAL,
                resource_version=self.version,
                timeout_seconds=60,
                allow_watch_bookmarks=True,
            )
            for event in stream:
                obj = event["object"]
                self.version = obj["metadata"]["resourceVersion"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                    if is_right(obj, self.expected):
                        self.wrong.discard(key)
                    elif key in self.expected:
                        self.wrong.add(key)
                    if not self.wrong:
                        self.done_at = time.monotonic()
                        return

    def wait(self, timeout: float) -> bool:
        self.thread.join(timeout)
        self._stop.set()
        return self.done_at is not None


def run_size(kubeconfig: str, count: int, workdir: Path) -> dict[str, Any]:
    from kubernetes import client

    api = api_client(kubeconfig)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    records = [
        ImageRecord(f"b{count}-{r.namespace}", r.name, r.layers, r.image, r.digest, r.marked)
        for r in forest(count, seed=count)
    ]
    expected = expected_statuses(records)
    for namespace in sorted({r.namespace for r in records}):
        core.create_namespace({"metadata": {"name": namespace}})

    def create(record: ImageRecord) -> None:
        body = ContainerImage.from_record(record).to_manifest()
        custom.create_namespaced_custom_object(
            GROUP, VERSION, record.namespace, PLURAL, body, _preload_content=False
        )

    def patch_with(statuses: Callable[[ImageRecord], dict[str, Any]]) -> Callable[[Any], None]:
        def patch(record: ImageRecord) -> None:
            custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                record.namespace,
                PLURAL,
                record.name,
                {"status": statuses(record)},
                _preload_content=False,
            )

        return patch

    def right(record: ImageRecord) -> dict[str, Any]:
        want = dict(expected[record.key])
        return {k: want.get(k) for k in CONTRACT_KEYS}  # null removes a stale key

    def wrong(record: ImageRecord) -> dict[str, Any]:
        return {**WRONG, "parent": None, "baseImage": None}

    log(f"N={count}: creating {count} images ...")
    in_threads(create, records)
    in_threads(patch_with(wrong), records)
    log(f"N={count}: floor: 8 threads writing {count} status patches ...")
    floor = in_threads(patch_with(right), records)
    in_threads(patch_with(wrong), records)
    listing = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1)
    version = listing["metadata"]["resourceVersion"]
    watcher = Convergence(api, expected, version).start()

    operator_ns = f"b{count}-operator"
    core.create_namespace({"metadata": {"name": operator_ns}})
    log_path = workdir / f"operator-{count}.log"
    log(f"N={count}: operator: starting image-ancestry run ...")
    started = time.monotonic()
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "image_ancestry.cli",
                "run",
                "--namespace",
                operator_ns,
                "--kubeconfig",
                kubeconfig,
                "--webhook",
                "off",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        converged = watcher.wait(timeout=600)
        elapsed = (watcher.done_at or time.monotonic()) - started
        time.sleep(1)
        rss, peak = rss_kib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    for namespace in sorted({r.namespace for r in records}):  # the next size starts clean
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    return {
        "images": count,
        "floor_s": round(floor, 2),
        "operator_s": round(elapsed, 2),
        "ratio": round(elapsed / floor, 2) if floor else None,
        "converged": converged,
        "wrong_left": len(watcher.wrong),
        "rss_mib": round(rss / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "log": str(log_path),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument(
        "--kubeconfig",
        default=None,
        help="an existing cluster (default: a fresh local control plane, stopped afterwards)",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ia-bench-"))
    cluster = None
    kubeconfig = args.kubeconfig
    if kubeconfig is None:
        from image_ancestry.controlplane.cluster import LocalCluster

        log("starting a local control plane ...")
        cluster = LocalCluster(workdir / "cluster")
        cluster.start()
        kubeconfig = str(cluster.kubeconfig)
    try:
        subprocess.run(
            [
                "kubectl",
                f"--kubeconfig={kubeconfig}",
                "apply",
                "-f",
                str(REPO / "crds" / "containerimages.yaml"),
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                "kubectl",
                f"--kubeconfig={kubeconfig}",
                "wait",
                "--for=condition=Established",
                "crd/containerimages.imageancestry.io",
            ],
            check=True,
            capture_output=True,
        )
        log(f"cores: {os.cpu_count()}, load average: {os.getloadavg()}")
        results = []
        for count in args.sizes:
            result = run_size(kubeconfig, count, workdir)
            results.append(result)
            log(json.dumps(result))
        log("")
        log(f"{'N':>6} {'floor s':>8} {'operator s':>11} {'ratio':>6} {'RSS MiB':>8} {'peak':>6}")
        for r in results:
            log(
                f"{r['images']:>6} {r['floor_s']:>8} {r['operator_s']:>11} {r['ratio']:>6} "
                f"{r['rss_mib']:>8} {r['peak_rss_mib']:>6}"
                + ("" if r["converged"] else f"  NOT CONVERGED ({r['wrong_left']} wrong)")
            )
    finally:
        if cluster is not None:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
