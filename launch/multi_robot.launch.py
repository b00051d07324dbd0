"""N robots (robot1..robotN edges) and one server: `ros2 launch fluxshard_bringup
multi_robot.launch.py count:=3` (each edge subscribes /robotK/image)."""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource


def _robots(context):
    launch_dir = os.path.join(get_package_share_directory('fluxshard_bringup'), 'launch')
    n = int(context.launch_configurations['count'])
    names = [f'robot{i + 1}' for i in range(n)]
    keys = context.launch_configurations['key_file']  # one file with every robot's line
    ds = context.launch_configurations['discovery_servers']
    acts = [IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(launch_dir, 'edge.launch.py')),
        launch_arguments={'namespace': r, 'image': f'/{r}/image', 'key_file': keys,
                          'discovery_servers': ds}.items()) for r in names]
    acts.append(IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(launch_dir, 'server.launch.py')),
        launch_arguments={'edges': str(names), 'key_file': keys,
                          'discovery_servers': ds}.items()))
    return acts


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('count', default_value='2', description='Number of robots'),
        DeclareLaunchArgument('key_file', default_value='',
                              description='Link key file with a line per robot (robot1..N)'),
        DeclareLaunchArgument('discovery_servers', default_value='',
                              description='Fast DDS Discovery Servers HOST[:PORT],... '
                                          '(empty: multicast discovery)'),
        OpaqueFunction(function=_robots),
    ])
