"""The HTTP API's routers, one module per area (mounted by `serving.api.build_app`)."""
