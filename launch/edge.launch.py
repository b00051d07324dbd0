"""Edge node for one robot: `ros2 launch fluxshard_bringup edge.launch.py namespace:=robot1
image:=/camera/image_raw
key_file:=/etc/fluxshard/robot1.keys`
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
    return [Node(package='fluxshard_edge', executable='edge_node', name='fluxshard_edge',
                 namespace=LaunchConfiguration('namespace'),
                 parameters=[LaunchConfiguration('params_file'),
                             {'security.key_file': LaunchConfiguration('key_file')}],
                 remappings=[('image', LaunchConfiguration('image'))],
                 additional_env={'FASTDDS_DEFAULT_PROFILES_FILE': profile},
                 output='screen')]


def generate_launch_description():
    share = get_package_share_directory('fluxshard_bringup')
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='',
                              description='Robot namespace (also the edge id)'),
        DeclareLaunchArgument('image', default_value='image',
                              description='Camera topic (sensor_msgs/Image)'),
        DeclareLaunchArgument('key_file', default_value='',
                              description="This robot's link key file (mode 0600)"),
        DeclareLaunchArgument('dds_profile', default_value=dds.profile_path(),
                              description=dds.LAUNCH_HELP),
        DeclareLaunchArgument('discovery_servers', default_value='',
                              description=dds.DISCOVERY_HELP),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'edge.yaml')),
        OpaqueFunction(function=_node),
    ])
