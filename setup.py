"""Build omkit: the Python package, its built-in plug-ins (plugins/ -> omkit.plugins)."""
from setuptools import find_packages, setup

setup(
    name="omkit",
    version="0.1.0",
    description="One-pass multi-task brain tumor segmentation: OM-Net with Cross-task Guided Attention",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["omkit", "omkit.*"]) + ["omkit.plugins"],
    package_dir={"omkit.plugins": "plugins"},
    install_requires=[
        "torch>=2.4,<3",
        "numpy>=1.24,<3",
        "nibabel>=5.0,<6",
        "pluggy>=1.3,<2",
        "scikit-learn>=1.3,<2",
        "scipy>=1.10,<2",
        "matplotlib>=3.7,<4",
        "tqdm>=4.60,<5",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "pytest-benchmark>=4"],
    },
    entry_points={"console_scripts": ["omkit = omkit.cli:main"]},
)
