"""Test infrastructure: network namespaces, the fake node, the NodeCore driver."""
