"""Server node on the GPU host: `ros2 launch fluxshard_bringup server.launch.py
edges:="['robot1', 'robot2']" key_file:=/etc/fluxshard/server.keys`
(add `discovery_servers:=10.0.0.2:11811,10.0.0.3:11811` where multicast does not reach)."""

import os

from ament_index_python.packages import get_package_share_directory
from fluxshard_msgs_py import dds
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _node(context):
    profile = dds.launch_profile(LaunchConfiguration('dds_profile').perform(context),
                                 LaunchConfiguration('discovery_servers').perform(context))
    return [Node(package='fluxshard_server', executable='server_node', name='fluxshard_server',
                 parameters=[LaunchConfiguration('params_file'),
                             {'edges': LaunchConfiguration('edges'),
                              'security.key_file': LaunchConfiguration('key_file')}],
                 additional_env={'FASTDDS_DEFAULT_PROFILES_FILE': profile},
                 output='screen')]


def generate_launch_description():
    share = get_package_share_directory('fluxshard_bringup')
    return LaunchDescription([
        DeclareLaunchArgument('edges', default_value="['']",
                              description='Namespaces of the served robots'),
        DeclareLaunchArgument('key_file', default_value='',
                              description='Link key file with a line per served robot (mode '
                                          '0600; python -m fluxshard_msgs_py.auth generate)'),
        DeclareLaunchArgument('dds_profile', default_value=dds.profile_path(),
                              description=dds.LAUNCH_HELP),
        DeclareLaunchArgument('discovery_servers', default_value='',
                              description=dds.DISCOVERY_HELP),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'server.yaml')),
        OpaqueFunction(function=_node),
    ])
