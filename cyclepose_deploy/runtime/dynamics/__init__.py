"""Flow dynamics: instance labels <-> Cellpose flows, for whole images and for chunks with a halo.

labels_to_flows: training targets and the flow-error check. flows_to_labels: the network's
(unit-scale) flows and cell probability -> instance labels. chunk_halo / segment_chunk / owned_ids:
the same computation per chunk of a slide, with ids that agree across chunks (see chunks.py).
"""

from cyclepose_deploy.runtime.dynamics.flows import labels_to_flows
from cyclepose_deploy.runtime.dynamics.halo import chunk_halo, owned_ids, segment_chunk
from cyclepose_deploy.runtime.dynamics.segment import DynamicsSettings, flows_to_labels

__all__ = [
    "DynamicsSettings",
    "chunk_halo",
    "flows_to_labels",
    "labels_to_flows",
    "owned_ids",
    "segment_chunk",
]
