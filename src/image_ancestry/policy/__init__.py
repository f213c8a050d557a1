"""AncestryPolicy: the ancestry gate at admission, Anchore's "ancestry" gate for Kubernetes.

- :mod:`.model`: the policy spec as pydantic types, with errors naming the field.
- :mod:`.gate`: pure decisions from the operator's in-memory index (image lookup, namespace
  selection, the rules, messages).
- :mod:`.audit`: which existing workloads the policies would refuse now, for their status.
"""
