"""``image-ancestry run``: the operator.

kopf and the Kubernetes client are imported inside the handler, so other subcommands do not
pay for them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

SubParsers = Any  # argparse's _SubParsersAction is private
DEFAULT_NAMESPACE = "image-ancestry-system"


def register(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the operator (watch ContainerImages, write their status)",
        description=(
            "Watch ContainerImages in every namespace and the ConfigMap image-ancestry-config "
            "in NS; keep every image's status (ancestors, parent, base image) up to date. "
            "Several replicas may run: one holds the Lease and writes, the others stand by "
            "with a warm index and take over when it stops renewing."
        ),
    )
    parser.add_argument(
        "--namespace",
        "-n",
        default=None,
        help="the operator's namespace: its ConfigMap and Lease live here "
        f"(default: $POD_NAMESPACE, else {DEFAULT_NAMESPACE})",
    )
    parser.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig file (default: $KUBECONFIG, "
        "~/.kube/config, else the in-cluster service account)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    ha = parser.add_argument_group("high availability")
    ha.add_argument(
        "--identity",
        default=None,
        help="this replica's name in the Lease (default: $POD_NAME, else host-pid-random)",
    )
    ha.add_argument(
        "--no-leader-election",
        dest="leader_election",
        action="store_false",
        help="write without holding the Lease (only ever for a single replica)",
    )
    ha.add_argument("--lease-name", default="image-ancestry", help="the Lease's name")
    ha.add_argument(
        "--lease-duration",
        type=float,
        default=15.0,
        help="seconds a standby waits on an unrenewed Lease before taking over (default 15)",
    )
    tuning = parser.add_argument_group("tuning")
    tuning.add_argument(
        "--concurrency", type=int, default=16, help="status writes in flight (default 16)"
    )
    tuning.add_argument(
        "--debounce",
        type=float,
        default=0.1,
        help="seconds a changed image waits, so bursts coalesce (default 0.1)",
    )
    tuning.add_argument(
        "--liveness",
        default=None,
        metavar="URL",
        help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    from image_ancestry.webhook.cli import add_arguments as add_webhook_arguments

    add_webhook_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    import kopf

    from image_ancestry.operator.controller import Options
    from image_ancestry.operator.leader import default_identity

    kopf.configure(verbose=args.verbose)
    if not args.verbose:
        # kopf's own per-object chatter at INFO is noise at tens of thousands of objects.
        logging.getLogger("kopf").setLevel(logging.WARNING)
    lease_duration = float(args.lease_duration)
    if lease_duration < 3:
        print("error: --lease-duration must be at least 3 seconds", file=sys.stderr)
        return 2
    options = Options(
        namespace=args.namespace or os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE,
        identity=args.identity or default_identity(),
        leader_election=args.leader_election,
        lease_name=args.lease_name,
        lease_duration=lease_duration,
        renew_deadline=lease_duration * 2 / 3,
        retry_period=min(2.0, lease_duration / 5),
        concurrency=max(1, int(args.concurrency)),
        debounce=max(0.0, float(args.debounce)),
    )
    try:
        return asyncio.run(_main(options, args.kubeconfig, args.liveness, args))
    except KeyboardInterrupt:
        return 130


async def _main(
    options: Any, kubeconfig: str | None, liveness: str | None, args: Any = None
) -> int:
    import asyncio

    import kopf

    from image_ancestry.operator.controller import Controller
    from image_ancestry.operator.handlers import build_registry, build_settings
    from image_ancestry.operator.kube import KubeClient, load_credentials

    log = logging.getLogger("image_ancestry.operator")
    try:
        creds = load_credentials(kubeconfig)
    except Exception as exc:
        print(f"error: cannot load Kubernetes credentials: {exc}", file=sys.stderr)
        return 1
    log.info(
        "starting: server %s, namespace %s, identity %s",
        creds.server,
        options.namespace,
        options.identity,
    )
    async with KubeClient(creds, connections=options.concurrency + 8) as kube:
        controller = Controller(kube, options)
        stop = asyncio.Event()
        registry, settings = build_registry(controller), build_settings()
        if args is not None:
            from image_ancestry.webhook.cli import install as install_webhook

            install_webhook(
                args, kube=kube, namespace=options.namespace, registry=registry, settings=settings
            )
        from image_ancestry.policy.admission import install as install_gate

        install_gate(
            controller=controller,
            kube=kube,
            namespace=options.namespace,
            registry=registry,
            settings=settings,
        )
        operator = asyncio.create_task(
            kopf.operator(
                registry=registry,
                settings=settings,
                clusterwide=True,
                standalone=True,
                stop_flag=stop,
                liveness_endpoint=liveness,
            ),
            name="kopf",
        )
        own = asyncio.create_task(controller.run(), name="controller")
        done, _ = await asyncio.wait({operator, own}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if own in done:
            if not own.cancelled() and own.exception() is not None:
                log.error("the controller crashed", exc_info=own.exception())
                code = 1
            stop.set()
            await asyncio.gather(operator, return_exceptions=True)
        else:
            own.cancel()
            await asyncio.gather(own, return_exceptions=True)
            if not operator.cancelled() and operator.exception() is not None:
                log.error("kopf stopped", exc_info=operator.exception())
                code = 1
        log.info("stopped")
        return code
