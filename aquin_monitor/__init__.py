"""aquin-monitor."""
