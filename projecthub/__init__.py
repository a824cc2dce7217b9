"""projecthub: isolated project workspaces driven over a CoCalc-compatible HTTP API."""

__version__ = "0.1.0"
# The integer CoCalc's `system.version` reports (a build timestamp in seconds).
BUILD_VERSION = 1795305600
