"""The operator: ``image-ancestry run``, kopf glue over the ancestry engine.

- :mod:`.handlers` registers kopf's low-level ``on.event`` handler for ContainerImages (no
  finalizers, no progress or diff-base storage, no ``status.kopf``) and the login handler.
- :mod:`.controller` owns the one :class:`~image_ancestry.engine.AncestryIndex`, feeds it from
  the events, tracks listings (so a relist drops objects deleted while the watch was away) and
  watches the ``image-ancestry-config`` ConfigMap for the flag.
- :mod:`.writer` coalesces bursts and patches the status subresource of exactly the images
  whose computed status differs from the stored one, with bounded concurrency.
- :mod:`.leader` is a Lease: two replicas run, both keep a warm index, one writes.
- :mod:`.kube` is a small asyncio client (aiohttp) with retries and backoff.
- :mod:`.status` builds the status (the contract's fields, ``Ready``, ``observedGeneration``,
  ``declaredBase``) as pure functions.
"""
