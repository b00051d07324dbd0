"""Rosbag replay evaluation of FluxShard against the paper's baselines (paper section 6).

``harness`` replays a bag's frames through each method's real edge and server code in one
process, with real message serialisation, and places every frame on a modelled timeline
(``sim``: device profiles of the paper's Table 1, an emulated link); ``live`` replays the bag
through the real nodes over DDS; ``report`` prints the tables and draws the plots; ``cli`` is
``fluxshard-eval``.
"""
