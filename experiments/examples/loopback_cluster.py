"""A Ray cluster of two nodes on this machine, every address on loopback, to try `--executor ray`.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 python experiments/examples/loopback_cluster.py

It prints the head's address (pass it as --address) and runs until Ctrl-C. Ray's `ray start`
refuses a second node while the variable keeps it on loopback ("Multi-node Ray clusters are not
supported"), so the nodes are started with Ray's own test cluster, as the project's tests do. Two
nodes on one machine measure each other's load: for trying the executor, not for figures.
"""

import os
import signal
import sys

if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
    sys.exit("set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 first: without it Ray binds the machine's interface "
             "address, not loopback")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ray.cluster_utils import Cluster  # noqa: E402  (after the variables Ray reads when imported)

loopback = {"node_ip_address": "127.0.0.1", "num_cpus": 1}
cluster = Cluster(initialize_head=True, head_node_args=loopback | {"include_dashboard": False})
cluster.add_node(**loopback)
print(cluster.address, flush=True)
signal.signal(signal.SIGTERM, signal.default_int_handler)
try:
    signal.pause()
except KeyboardInterrupt:
    cluster.shutdown()
