"""The two-node cluster and S3 fixtures (tests/multinode/cluster_harness.py)."""

from multinode.cluster_harness import cluster_ray, s3_server, two_node_cluster  # noqa: F401
