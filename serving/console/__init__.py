"""The web console for moderators, brands and investigators, served under `/console` (see `app`)."""

from markguard.serving.console.app import build_console

__all__ = ["build_console"]
