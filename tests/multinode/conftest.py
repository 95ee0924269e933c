"""Fixtures of the two-node cluster harness (defined in cluster_harness.py, re-exported here)."""

from multinode.cluster_harness import cluster_ray, s3_server, two_node_cluster  # noqa: F401
