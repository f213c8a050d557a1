"""``image-ancestry import``: ContainerImage manifests from real images.

Sources are named the way skopeo names them (``oci:DIR[:TAG]``, ``docker-archive:FILE[:REF]``,
``docker://HOST/REPO:TAG`` or ``@sha256:...``). Each source resolves to one or more
:class:`~image_ancestry.importer.images.ImportedImage` values, which
:mod:`image_ancestry.importer.manifests` turns into validated ContainerImage manifests.
"""
