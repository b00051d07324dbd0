"""Is the camera arriving? A publisher on the camera topic and no frames for a while usually
means the middleware drops them (large best-effort images without the shipped Fast DDS
profile, incompatible QoS, another domain's shared memory) or a stalled driver. ROS-free."""

from typing import Optional


class CameraWatch:
    """Say so, once per silent stretch, when the camera topic has a publisher but no frame
    arrived for ``silent_s`` seconds (since the publisher appeared or since the last frame)."""

    def __init__(self, silent_s: float = 5.0):
        self.silent_s = silent_s
        self._frames = 0
        self._since: Optional[float] = None  # start of the current silent stretch
        self._told = False
        self.silent_for = 0.0

    def update(self, now: float, publishers: int, frames_in: int) -> Optional[str]:
        """Call about once a second; returns a warning text when the camera has just been
        silent for ``silent_s`` with a publisher present, else None."""
        if publishers <= 0 or frames_in != self._frames or self._since is None:
            self._frames = frames_in
            self._since = now if publishers > 0 else None
            self._told = False
            self.silent_for = 0.0
            return None
        self.silent_for = now - self._since
        if self.silent_for < self.silent_s or self._told:
            return None
        self._told = True
        return (f'{publishers} publisher(s) on the camera topic but no frame for '
                f'{self.silent_for:.0f} s. Large raw images (720p and up) with best-effort '
                'QoS need the shipped Fast DDS profile in BOTH the camera driver and this '
                'process: FASTDDS_DEFAULT_PROFILES_FILE=<share/fluxshard_msgs/dds/fastdds.xml> '
                '(docs/design.md, "DDS on a robot"); also check that the driver still '
                'publishes')
