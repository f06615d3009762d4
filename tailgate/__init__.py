"""tailgate: an AI gateway that knows who is calling from their Tailscale identity."""

__version__ = "0.1.0"
