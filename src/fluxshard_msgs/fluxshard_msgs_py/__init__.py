"""Python helpers installed beside the fluxshard_msgs interfaces (the ``sensor_msgs_py``
pattern): wire code both the edge and the server import, so neither imports the other."""
