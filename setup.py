"""Packages are found, not listed: every sft_exp.* folder ships. conf/ sits at the repo top and ships
inside the wheel as sft_exp.conf (sft_exp.paths.config_dir finds it either way)."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["sft_exp", "sft_exp.*", "hydra_plugins", "hydra_plugins.*"]),
        "sft_exp.conf",
    ],
    package_dir={"sft_exp.conf": "conf"},
)
