"""The package list, discovered rather than written out (a hand-written list once left
``trafficflip.cluster`` out of the wheel). Everything else is in pyproject.toml.

``providers/`` installs as ``trafficflip.providers``: pyproject.toml's ``packages.find``
names packages after their folders and cannot install one folder under another name, so the
discovery is done here, with the same finder, and the folder's packages renamed.
"""

from setuptools import find_namespace_packages, setup

# Namespace discovery also finds data-only folders (operations/static), which setuptools
# otherwise warns about once per file, and ships them as package data.
CORE = find_namespace_packages(include=["trafficflip", "trafficflip.*"])
PROVIDERS = [
    f"trafficflip.{name}" for name in find_namespace_packages(include=["providers", "providers.*"])
]

setup(packages=CORE + PROVIDERS)
