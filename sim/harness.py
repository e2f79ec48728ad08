"""Compatibility names for the first in-memory harness; the simulator lives in
``sim.cluster`` (nodes, network, disks), ``sim.content`` and ``sim.scenarios``."""

from sim.cluster import ClientRecord, Cluster
from sim.content import Content, FileModel, model_id, parity_content
from sim.disk import SimDisk

__all__ = ["ClientRecord", "Cluster", "Content", "FileModel", "SimDisk", "model_id", "parity_content"]
