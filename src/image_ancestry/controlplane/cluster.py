"""Start and stop a local kube-apiserver and etcd that outlive the command that started them.

State lives in one folder (default ``.cluster/``): certificates, etcd's data, logs, the
kubeconfig and ``state.json`` with the ports and process ids. ``stop`` ends exactly the
processes recorded there (after checking that each pid still runs our binary with our
folder, so a recycled pid is never killed) and removes the folder. Components can also be
stopped, started and paused one at a time without losing data, which the fault tests use.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from image_ancestry import pki
from image_ancestry.controlplane.build import (
    ETCD_VERSION,
    KUBERNETES_VERSION,
    Binaries,
    Progress,
    default_progress,
    ensure_binaries,
)

DEFAULT_DIR = Path(".cluster")
COMPONENTS = ("etcd", "kube-apiserver")
CLUSTER_NAME = "image-ancestry-local"
READY_TIMEOUT = 120.0


class ClusterError(RuntimeError):
    """The control plane could not be started, reached or stopped."""


@dataclass
class ClusterState:
    """What ``state.json`` records about a running control plane."""

    etcd_port: int
    etcd_peer_port: int
    apiserver_port: int
    kubernetes_version: str = KUBERNETES_VERSION
    etcd_version: str = ETCD_VERSION
    binaries: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    audit_log: str | None = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pid_alive(pid: int) -> bool:
    """True when ``pid`` runs and is not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _pid_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


class LocalCluster:
    """A kube-apiserver and etcd on loopback, described by the files in ``directory``."""

    def __init__(self, directory: Path | str = DEFAULT_DIR, progress: Progress | None = None):
        self.dir = Path(directory).resolve()
        self.progress = progress or default_progress

    # -- paths -------------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def pki_dir(self) -> Path:
        return self.dir / "pki"

    def log_file(self, component: str) -> Path:
        return self.dir / "logs" / f"{component}.log"

    # -- state -------------------------------------------------------------------------------

    def state(self) -> ClusterState | None:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ClusterError(f"{self.state_file} is unreadable: {exc}") from exc
        return ClusterState(**data)

    def _save(self, state: ClusterState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
        tmp.replace(self.state_file)

    def _owned_pid(self, state: ClusterState, component: str) -> int | None:
        """The recorded pid of ``component`` if it is still our process."""
        pid = state.pids.get(component)
        if not pid or not _pid_alive(pid):
            return None
        cmdline = _pid_cmdline(pid)
        binary = state.binaries.get(component, "")
        if not cmdline or cmdline[0] != binary or not any(str(self.dir) in a for a in cmdline):
            return None
        return pid

    def is_running(self) -> bool:
        state = self.state()
        return state is not None and all(self._owned_pid(state, c) for c in COMPONENTS)

    @property
    def server(self) -> str:
        state = self.state()
        if state is None:
            raise ClusterError(f"no control plane recorded in {self.dir}")
        return f"https://127.0.0.1:{state.apiserver_port}"

    # -- start -------------------------------------------------------------------------------

    def start(self, audit: bool = False) -> ClusterState:
        """Start both components (or reuse them when already running) and wait for /readyz."""
        state = self.state()
        if state is not None and self.is_running():
            self._wait_ready(state)
            self.progress(f"control plane already running in {self.dir}")
            return state
        if state is not None:
            # A stale folder from a crash: its processes are gone, start afresh.
            self._kill_all(state)
            self._remove_dir()
        binaries = ensure_binaries(self.progress)
        started = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        state = ClusterState(
            etcd_port=_free_port(),
            etcd_peer_port=_free_port(),
            apiserver_port=_free_port(),
            binaries={"etcd": str(binaries.etcd), "kube-apiserver": str(binaries.kube_apiserver)},
            audit_log=str(self.dir / "logs" / "audit.log") if audit else None,
        )
        self._write_pki(state)
        self._write_kubeconfig(state)
        if audit:
            self._write_audit_policy()
        self._save(state)
        try:
            for component in COMPONENTS:
                self.start_component(component, state)
        except BaseException:
            self._kill_all(state)
            raise
        self.progress(
            f"control plane ready in {time.monotonic() - started:.1f}s: "
            f"kube-apiserver {KUBERNETES_VERSION} at https://127.0.0.1:{state.apiserver_port}, "
            f"kubeconfig {self.kubeconfig}"
        )
        return state

    def start_component(self, component: str, state: ClusterState | None = None) -> None:
        """Start one component with the ports and data it had, and wait until it is healthy."""
        state = state or self.state()
        if state is None:
            raise ClusterError(f"no control plane recorded in {self.dir}")
        if self._owned_pid(state, component):
            return
        binaries = Binaries(Path(state.binaries["kube-apiserver"]), Path(state.binaries["etcd"]))
        args = (
            self._etcd_args(binaries, state)
            if component == "etcd"
            else self._apiserver_args(binaries, state)
        )
        log = self.log_file(component).open("ab")
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # detached: it outlives the command that started it
                close_fds=True,
            )
        finally:
            log.close()
        state.pids[component] = proc.pid
        self._save(state)
        if component == "etcd":
            self._wait_etcd(state, proc)
        else:
            self._wait_ready(state, proc)

    def _etcd_args(self, binaries: Binaries, state: ClusterState) -> list[str]:
        client = f"http://127.0.0.1:{state.etcd_port}"
        peer = f"http://127.0.0.1:{state.etcd_peer_port}"
        return [
            str(binaries.etcd),
            "--name=default",
            f"--data-dir={self.dir / 'etcd-data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync",  # a throwaway local store: speed over durability
            "--log-level=warn",
        ]

    def _apiserver_args(self, binaries: Binaries, state: ClusterState) -> list[str]:
        p = self.pki_dir
        args = [
            str(binaries.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{state.etcd_port}",
            f"--secure-port={state.apiserver_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--authorization-mode=RBAC",
            # No kube-controller-manager makes default service accounts, so admission would
            # reject every Pod that names none; envtest disables the plugin for that reason.
            "--disable-admission-plugins=ServiceAccount",
            f"--service-account-issuer=https://127.0.0.1:{state.apiserver_port}",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--cert-dir={p}",
            "--v=1",
        ]
        if state.audit_log:
            args += [
                f"--audit-policy-file={self.dir / 'audit-policy.yaml'}",
                f"--audit-log-path={state.audit_log}",
                "--audit-log-format=json",
            ]
        return args

    def _write_pki(self, state: ClusterState) -> None:
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        ca = pki.make_ca("image-ancestry-local-ca")
        ca.write(self.pki_dir / "ca.crt", self.pki_dir / "ca.key")
        serving = pki.make_serving_cert(
            ca,
            "kube-apiserver",
            ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            ["127.0.0.1", "10.0.0.1"],
        )
        serving.write(self.pki_dir / "apiserver.crt", self.pki_dir / "apiserver.key")
        admin = pki.make_client_cert(ca, "admin", ["system:masters"])
        admin.write(self.pki_dir / "admin.crt", self.pki_dir / "admin.key")
        sa_private, sa_public = pki.make_signing_key()
        pki.write_private(self.pki_dir / "sa.key", sa_private)
        (self.pki_dir / "sa.pub").write_bytes(sa_public)

    def _write_kubeconfig(self, state: ClusterState) -> None:
        def b64(name: str) -> str:
            return base64.b64encode((self.pki_dir / name).read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": CLUSTER_NAME,
                    "cluster": {
                        "server": f"https://127.0.0.1:{state.apiserver_port}",
                        "certificate-authority-data": b64("ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64("admin.crt"),
                        "client-key-data": b64("admin.key"),
                    },
                }
            ],
            "contexts": [
                {"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": "admin"}}
            ],
            "current-context": CLUSTER_NAME,
        }
        pki.write_private(self.kubeconfig, yaml.safe_dump(config).encode())

    def _write_audit_policy(self) -> None:
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata"}],
        }
        (self.dir / "audit-policy.yaml").write_text(yaml.safe_dump(policy))

    # -- health ------------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        return ctx

    def get_raw(self, path: str, timeout: float = 5.0) -> str:
        """GET ``path`` from the API server as the admin (like ``kubectl get --raw``)."""
        url = f"{self.server}{path}"
        with urllib.request.urlopen(url, context=self._ssl_context(), timeout=timeout) as resp:
            body: bytes = resp.read()
        return body.decode()

    def _wait(self, component: str, check: Any, proc: subprocess.Popen[bytes] | None) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise ClusterError(
                    f"{component} exited with code {proc.returncode}; "
                    f"last lines of {self.log_file(component)}:\n{self._log_tail(component)}"
                )
            try:
                if check():
                    return
                last_error = "not ready"
            except (OSError, urllib.error.URLError, ssl.SSLError) as exc:
                last_error = str(exc)
            time.sleep(0.2)
        raise ClusterError(
            f"{component} not healthy after {READY_TIMEOUT:.0f}s ({last_error}); "
            f"see {self.log_file(component)}:\n{self._log_tail(component)}"
        )

    def _wait_etcd(self, state: ClusterState, proc: subprocess.Popen[bytes] | None = None) -> None:
        def check() -> bool:
            url = f"http://127.0.0.1:{state.etcd_port}/health"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")

        self._wait("etcd", check, proc)

    def _wait_ready(self, state: ClusterState, proc: subprocess.Popen[bytes] | None = None) -> None:
        self._wait("kube-apiserver", lambda: self.get_raw("/readyz", timeout=2) == "ok", proc)

    def _log_tail(self, component: str, lines: int = 15) -> str:
        try:
            text = self.log_file(component).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- stop --------------------------------------------------------------------------------

    def stop_component(self, component: str, timeout: float = 20.0) -> None:
        """Stop one component; its data stays, so ``start_component`` brings it back."""
        state = self.state()
        if state is None:
            return
        pid = self._owned_pid(state, component)
        if pid is not None:
            _terminate(pid, timeout)
        state.pids.pop(component, None)
        self._save(state)

    def signal_component(self, component: str, signum: int) -> None:
        """Send ``signum`` (SIGSTOP, SIGCONT, ...) to one component."""
        state = self.state()
        pid = self._owned_pid(state, component) if state else None
        if pid is None:
            raise ClusterError(f"{component} is not running in {self.dir}")
        os.kill(pid, signum)

    def _kill_all(self, state: ClusterState) -> None:
        # The API server first, so it never sees its store vanish under it.
        for component in reversed(COMPONENTS):
            pid = self._owned_pid(state, component)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
                _terminate(pid, 20.0)

    def stop(self) -> bool:
        """End the recorded processes and remove the folder; False when nothing was there."""
        state = self.state()
        if state is None:
            return False
        self._kill_all(state)
        self._remove_dir()
        return True

    def _remove_dir(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM, wait, then SIGKILL; reap it when it is our child."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.1)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _pid_alive(pid):
            time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
