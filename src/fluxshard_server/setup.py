from setuptools import find_packages, setup

package_name = 'fluxshard_server'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='FluxShard developers',
    maintainer_email='dev@fluxshard.org',
    description='FluxShard server node: per-edge proxy states, inference, result publishing.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={'console_scripts': [
        'server_node = fluxshard_server.server_node:main',
    ]},
)
