from setuptools import find_packages, setup

package_name = 'fluxshard_eval'

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
    description='FluxShard evaluation and tools: rosbag replay evaluation, the graph runner, '
                'bag tools, camera replay.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={'console_scripts': [
        'fluxshard_run = fluxshard_eval.runner:main',
        'fluxshard-eval = fluxshard_eval.cli:main',
        'fluxshard-bag = fluxshard_eval.bag:main',
        'image_publisher = fluxshard_eval.image_publisher_node:main',
    ]},
)
