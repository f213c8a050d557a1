"""image-ancestry: every container image's ancestors, parent and base image, in Kubernetes.

The package is split by concern: ``model`` (pydantic types and validation), ``engine`` (the
ancestry index, pure Python), ``operator`` (kopf glue), ``webhook`` and ``policy`` (admission),
``importer`` (manifests from real images), ``controlplane`` (a local kube-apiserver and etcd)
and ``cli`` (the ``image-ancestry`` command).
"""

__version__ = "0.1.0"

GROUP = "imageancestry.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
