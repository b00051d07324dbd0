"""FluxShard evaluation and tooling, above both node packages (the GPU host installs only
fluxshard_server, a robot only fluxshard_edge; this package needs both).

Rosbag replay evaluation against the paper's baselines (paper section 6): ``harness`` replays a
bag's frames through each method's real edge and server code in one process, with real message
serialisation, and places every frame on a modelled timeline (``sim``: device profiles of the
paper's Table 1, an emulated link); ``live`` replays the bag through the real nodes over DDS;
``report`` prints the tables and draws the plots; ``cli`` is ``fluxshard-eval``. Tools:
``runner`` (``fluxshard_run``: the graph as processes), ``bag`` (``fluxshard-bag``),
``image_publisher_node`` (camera replay), ``netns`` (shaped network namespaces).
"""
