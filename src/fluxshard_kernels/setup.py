from setuptools import Extension, find_packages, setup

package_name = 'fluxshard_kernels'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
    ],
    install_requires=['setuptools', 'numpy'],
    # C kernels loaded through ctypes: block matching (fluxshard_kernels.motion) and the
    # incremental engine's per-layer loops (fluxshard_kernels.compiled)
    ext_modules=[Extension('fluxshard_kernels._motion', ['fluxshard_kernels/csrc/motion.c'],
                           extra_compile_args=['-O3', '-fno-strict-aliasing']),
                 # no FP traps or errno (as torch is built): the SiLU loop vectorises
                 Extension('fluxshard_kernels._engine', ['fluxshard_kernels/csrc/engine.c'],
                           extra_compile_args=['-O3', '-fno-strict-aliasing',
                                               '-fno-trapping-math', '-fno-math-errno',
                                               '-fopenmp'],
                           # OpenMP: the same libgomp.so.1 torch loads (one thread pool)
                           extra_link_args=['-fopenmp'], libraries=['m'])],
    zip_safe=False,
    maintainer='FluxShard developers',
    maintainer_email='dev@fluxshard.org',
    description='FluxShard motion-aware cache engine (no ROS imports).',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={'console_scripts': []},
)
