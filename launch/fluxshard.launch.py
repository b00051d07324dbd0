"""One robot (edge) and one server on the same graph:
`ros2 launch fluxshard_bringup fluxshard.launch.py namespace:=robot1 image:=/camera/image_raw`."""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PythonExpression


def generate_launch_description():
    launch_dir = os.path.join(get_package_share_directory('fluxshard_bringup'), 'launch')
    ns = LaunchConfiguration('namespace')
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='robot1'),
        DeclareLaunchArgument('image', default_value='image'),
        DeclareLaunchArgument('key_file', default_value='',
                              description='Link key file holding this robot\'s line'),
        DeclareLaunchArgument('discovery_servers', default_value='',
                              description='Fast DDS Discovery Servers HOST[:PORT],... '
                                          '(empty: multicast discovery)'),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(launch_dir, 'edge.launch.py')),
            launch_arguments={'namespace': ns, 'image': LaunchConfiguration('image'),
                              'key_file': LaunchConfiguration('key_file'),
                              'discovery_servers': LaunchConfiguration('discovery_servers')
                              }.items()),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(launch_dir, 'server.launch.py')),
            launch_arguments={'edges': PythonExpression(["['", ns, "']"]),
                              'key_file': LaunchConfiguration('key_file'),
                              'discovery_servers': LaunchConfiguration('discovery_servers')
                              }.items()),
    ])
