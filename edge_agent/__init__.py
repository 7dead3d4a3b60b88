"""edge_agent: privacy-first edge agent for municipal video-protection cameras."""

__version__ = "0.1.0"
