"""The webhook's options of ``image-ancestry run``, and installing it into the operator.

Kept apart from :mod:`.server` so that building the command's parser imports nothing heavy.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, cast

logger = logging.getLogger(__name__)

CERT_DIR_ENV = "IMAGE_ANCESTRY_WEBHOOK_CERT_DIR"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("validating webhook (rules 5 and 7)")
    group.add_argument(
        "--webhook",
        choices=("auto", "local", "cluster", "off"),
        default="auto",
        help="auto (the default): 'cluster' in a pod, 'local' for an API server on this host "
        "(a URL webhook on 127.0.0.1, registered on start and removed on exit), else 'off'",
    )
    group.add_argument(
        "--webhook-port",
        type=int,
        default=None,
        help="listening port (default: a free port locally, 9443 in the cluster)",
    )
    group.add_argument(
        "--webhook-cert-dir",
        type=Path,
        default=os.environ.get(CERT_DIR_ENV) or None,
        help="in the cluster: serve tls.crt/tls.key from this directory (e.g. a cert-manager "
        "Secret) instead of the generated Secret image-ancestry-webhook-tls "
        f"(also ${CERT_DIR_ENV})",
    )


def install(
    args: argparse.Namespace, *, kube: Any, namespace: str, registry: Any, settings: Any
) -> Any:
    """Register the handler on ``registry`` and the server in ``settings``; None when off."""
    from image_ancestry.webhook.server import AncestryWebhook, Mode, WebhookOptions, choose_mode

    chosen = str(getattr(args, "webhook", "auto"))
    mode: Mode
    if chosen in ("local", "cluster", "off"):
        mode = cast("Mode", chosen)
    else:
        mode = choose_mode(kube.creds.server, in_cluster=kube.creds.token_path is not None)
    if mode == "off":
        logger.warning(
            "validating webhook off: API server %s is neither local nor this cluster's; "
            "marks and annotation values are not enforced",
            kube.creds.server,
        )
        return None
    options = WebhookOptions(
        namespace=namespace,
        mode=mode,
        port=getattr(args, "webhook_port", None),
        cert_dir=getattr(args, "webhook_cert_dir", None),
    )
    webhook = AncestryWebhook(kube, options)
    webhook.register(registry)
    webhook.configure(settings)
    logger.info("validating webhook: %s mode", mode)
    return webhook
