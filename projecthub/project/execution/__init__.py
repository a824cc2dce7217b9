"""The exec engine's parts; ``projecthub.project.exec`` is the public surface."""
