"""The validating webhook for ContainerImages (rules 5 and 7 of the contract), served by the
operator process through kopf's admission support.

- :mod:`.decisions`: pure functions from an AdmissionReview request and the admin lists to an
  answer whose message names the rule, the field, the bad value and how to be allowed.
- :mod:`.config`: ``admin_groups`` / ``admin_users`` from the ConfigMap, watched.
- :mod:`.tls`: serving certificates (local, mounted, or generated into a shared Secret).
- :mod:`.server`: :class:`~.server.AncestryWebhook`, the kopf handler and server.
"""

from image_ancestry.webhook.server import AncestryWebhook, WebhookOptions, choose_mode

__all__ = ["AncestryWebhook", "WebhookOptions", "choose_mode"]
