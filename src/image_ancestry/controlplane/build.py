"""Build kube-apiserver and etcd from their Go modules, once, into a per-version cache.

The wrapper modules in ``hack/kube-apiserver`` and ``hack/etcd`` pin the releases; building
from inside them is needed because both upstream modules carry ``replace`` directives that
``go install pkg@version`` refuses. A finished binary is moved into place atomically, so an
interrupted build never leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"

Progress = Callable[[str], None]


class BuildError(RuntimeError):
    """The binaries are missing and cannot be built here."""


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    etcd: Path


def default_progress(message: str) -> None:
    print(f"image-ancestry: {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """``~/.cache/image-ancestry/<versions>/`` (honours ``XDG_CACHE_HOME``)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "image-ancestry" / f"kubernetes-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}"


def hack_dir() -> Path:
    """The wrapper Go modules, which live in the source checkout beside ``src/``."""
    return Path(__file__).resolve().parents[3] / "hack"


def _version_ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    pkg = "k8s.io/component-base/version"
    flags = {
        "gitVersion": KUBERNETES_VERSION,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    return "-s -w " + " ".join(f"-X {pkg}.{k}={v}" for k, v in flags.items())


def _etcd_ldflags() -> str:
    return f"-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA={ETCD_VERSION}"


def _explicit_assets() -> Binaries | None:
    """Prebuilt binaries named by ``IMAGE_ANCESTRY_ASSETS`` or envtest's ``KUBEBUILDER_ASSETS``."""
    for var in ("IMAGE_ANCESTRY_ASSETS", "KUBEBUILDER_ASSETS"):
        value = os.environ.get(var)
        if not value:
            continue
        folder = Path(value)
        found = Binaries(folder / "kube-apiserver", folder / "etcd")
        if found.kube_apiserver.is_file() and found.etcd.is_file():
            return found
        raise BuildError(f"{var}={value} does not contain both kube-apiserver and etcd")
    return None


def ensure_binaries(progress: Progress = default_progress) -> Binaries:
    """Return the binaries, building whatever is missing from the cache."""
    explicit = _explicit_assets()
    if explicit is not None:
        return explicit
    folder = cache_dir()
    wanted = Binaries(folder / "kube-apiserver", folder / "etcd")
    jobs = [
        (wanted.etcd, "etcd", ETCD_VERSION, "go.etcd.io/etcd/server/v3", _etcd_ldflags()),
        (
            wanted.kube_apiserver,
            "kube-apiserver",
            KUBERNETES_VERSION,
            "k8s.io/kubernetes/cmd/kube-apiserver",
            _version_ldflags(),
        ),
    ]
    missing = [job for job in jobs if not job[0].is_file()]
    if not missing:
        return wanted
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "kube-apiserver and etcd are not built yet and there is no Go toolchain to build "
            "them (install Go 1.26+). Alternatives: run the tests on kind "
            "(--cluster-backend kind, needs Docker), point at an existing cluster "
            "(--cluster-backend existing, uses KUBECONFIG), or set KUBEBUILDER_ASSETS to a "
            "folder holding kube-apiserver and etcd."
        )
    folder.mkdir(parents=True, exist_ok=True)
    for target, name, version, package, ldflags in missing:
        _go_build(go, hack_dir() / name, package, ldflags, target, f"{name} {version}", progress)
    return wanted


def _go_build(
    go: str,
    module_dir: Path,
    package: str,
    ldflags: str,
    target: Path,
    label: str,
    progress: Progress,
) -> None:
    if not (module_dir / "go.mod").is_file():
        raise BuildError(f"{module_dir}/go.mod is missing: building needs the source checkout")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    env = dict(os.environ, CGO_ENABLED="0")
    cmd = [go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(partial), package]
    progress(f"building {label} from Go modules (the first build takes several minutes)")
    started = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(30):
            progress(f"  still building {label} ({time.monotonic() - started:.0f}s)")

    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    try:
        result = subprocess.run(
            cmd, cwd=module_dir, env=env, capture_output=True, text=True, check=False
        )
    finally:
        done.set()
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = "\n".join((result.stderr or result.stdout).splitlines()[-20:])
        raise BuildError(f"go build of {label} failed:\n{tail}")
    partial.replace(target)
    progress(f"built {label} in {time.monotonic() - started:.0f}s -> {target}")
