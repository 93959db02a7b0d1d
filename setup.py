"""mixaq_mmdet: MixA-Q mixed-precision window quantization as an mmdet 3.x plugin.

The default environment (exact pins and build flags) is made by
``tools/setup_env.sh``. The ranges below are the tested ones: the whole suite
passes with Python 3.11 and torch 2.13.0 (the pins); with Python 3.10 and torch
2.4.1 all but three torch.compile tests pass (docs/environment.md, "Tested range").
"""
from setuptools import find_packages, setup

setup(
    name='mixaq_mmdet',
    version='0.1.0',
    description='MixA-Q: mixed-precision activation quantization of window '
    'attention for MMDetection',
    python_requires='>=3.10',  # the oldest tested; 3.9 was not
    packages=find_packages(include=['mixaq_mmdet', 'mixaq_mmdet.*']),
    install_requires=[
        # 2.4: torch.library.custom_op (the plugin's ops). 2.14's headers need
        # C++20; mmcv 2.1.0 compiles as C++17.
        'torch>=2.4,<2.14',
        'mmengine>=0.10.7,<0.11',
        # mmdet 3.3.0 asserts mmcv >= 2.0.0rc4, < 2.2.0; needs the compiled ops.
        'mmcv>=2.0.0rc4,<2.2.0',
        'mmdet>=3.3.0,<3.4',
        'pycocotools',
        'numpy',
        'opencv-python',
        'matplotlib',
        'pymoo>=0.6.1,<0.7',  # NSGA-II of the ratio search
        'scipy',
    ],
    extras_require={'tests': ['pytest']},
)
