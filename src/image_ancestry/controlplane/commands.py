"""``image-ancestry cluster``: build, start, stop and inspect the local control plane."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from image_ancestry.controlplane.build import BuildError, ensure_binaries
from image_ancestry.controlplane.cluster import COMPONENTS, DEFAULT_DIR, ClusterError, LocalCluster

SubParsers = Any  # argparse's _SubParsersAction is private; it is only passed through here.


def register(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "cluster",
        help="run a local kube-apiserver and etcd (no Docker needed)",
        description=(
            "A real local control plane, run the way controller-runtime's envtest runs it: "
            "kube-apiserver and etcd built from their Go modules, on loopback. There is no "
            "kube-controller-manager, scheduler or kubelet: no garbage collection, no namespace "
            "finalization, no scheduling."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, help="state folder (default: .cluster/)"
        )
        return p

    start = with_dir(actions.add_parser("start", help="start it and wait until /readyz is ok"))
    start.add_argument("--audit", action="store_true", help="write an audit log (JSON) in DIR/logs")
    start.set_defaults(func=_start)
    with_dir(actions.add_parser("stop", help="end its processes and remove DIR")).set_defaults(
        func=_stop
    )
    with_dir(actions.add_parser("status", help="print its state as JSON")).set_defaults(
        func=_status
    )
    actions.add_parser("build", help="build (or find) the binaries only").set_defaults(func=_build)
    for verb, helptext in (
        ("stop-component", "stop one component, keeping its data"),
        ("start-component", "start a stopped component again"),
        ("pause-component", "SIGSTOP one component"),
        ("resume-component", "SIGCONT one component"),
    ):
        p = with_dir(actions.add_parser(verb, help=helptext))
        p.add_argument("component", choices=COMPONENTS)
        p.set_defaults(func=_component, verb=verb)


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def _start(args: argparse.Namespace) -> int:
    cluster = LocalCluster(args.dir)
    try:
        cluster.start(audit=args.audit)
    except (BuildError, ClusterError) as exc:
        return _fail(exc)
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    print(f"# stop it with: image-ancestry cluster stop --dir {args.dir}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    try:
        stopped = LocalCluster(args.dir).stop()
    except ClusterError as exc:
        return _fail(exc)
    print("stopped" if stopped else f"nothing running in {args.dir}")
    return 0


def _status(args: argparse.Namespace) -> int:
    cluster = LocalCluster(args.dir)
    try:
        state = cluster.state()
    except ClusterError as exc:
        return _fail(exc)
    if state is None:
        print(f"nothing running in {args.dir}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "running": cluster.is_running(),
                "kubeconfig": str(cluster.kubeconfig),
                **state.__dict__,
            },
            indent=2,
        )
    )
    return 0 if cluster.is_running() else 1


def _build(args: argparse.Namespace) -> int:
    try:
        binaries = ensure_binaries()
    except BuildError as exc:
        return _fail(exc)
    print(binaries.kube_apiserver)
    print(binaries.etcd)
    return 0


def _component(args: argparse.Namespace) -> int:
    cluster = LocalCluster(args.dir)
    try:
        if args.verb == "stop-component":
            cluster.stop_component(args.component)
        elif args.verb == "start-component":
            cluster.start_component(args.component)
        elif args.verb == "pause-component":
            cluster.signal_component(args.component, signal.SIGSTOP)
        else:
            cluster.signal_component(args.component, signal.SIGCONT)
    except (BuildError, ClusterError) as exc:
        return _fail(exc)
    return 0
