"""A real local Kubernetes control plane: kube-apiserver and etcd on loopback.

It is run the way controller-runtime's envtest runs it: binaries built from their Go modules,
a generated CA, an admin client certificate, and no kube-controller-manager, scheduler or
kubelet. The same code serves ``image-ancestry cluster`` and the test fixtures.
"""
