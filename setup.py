"""Packaging beyond what pyproject.toml can say: the Hydra configs live at the top level
(``conf/``, where users edit them) and ship inside the wheel as ``audiolab/conf``, so the
console scripts of an installed wheel find them (``audiolab.cli.config_dir``)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages("src", include=["audiolab", "audiolab.*"]),
              "audiolab.conf", "hydra_plugins.audiolab_sweepers"],
    package_dir={"": "src", "audiolab.conf": "conf"},
    package_data={"audiolab.conf": ["*.yaml", "**/*.yaml"], "audiolab.pitch": ["weights/*.pt", "weights/*.json"]},
    exclude_package_data={"audiolab.conf": ["local/*"]},
)
