"""A Fast DDS Discovery Server, for fleets where multicast does not reach (several hosts,
WAN, Wi-Fi that drops multicast): `ros2 launch fluxshard_bringup discovery_server.launch.py
listen:=10.0.0.2:11811` on two hosts, then every FluxShard launch with
`discovery_servers:=10.0.0.2:11811,10.0.0.3:11811` (docs/design.md "Discovery without
multicast")."""

from fluxshard_msgs_py import dds
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration


def _server(context):
    (host, port), = dds.parse_servers(LaunchConfiguration('listen').perform(context))[:1]
    argv, env = dds.discovery_server_command(host, port)
    return [ExecuteProcess(cmd=argv, env=env, output='screen')]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('listen', default_value=f'0.0.0.0:{dds.DISCOVERY_PORT}',
                              description='HOST[:PORT] this discovery server listens on'),
        OpaqueFunction(function=_server),
    ])
