"""The data model: policy, names, manifests, the catalog, placement (pure)."""
