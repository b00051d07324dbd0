"""FluxShard server side: ROS-free logic modules plus the server node (``server_node``)."""
