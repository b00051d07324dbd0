"""FluxShard edge side: ROS-free logic modules plus the edge node (``edge_node``)."""
