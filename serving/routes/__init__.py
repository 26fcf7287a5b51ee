"""The HTTP API's routers, one module per resource; `markguard.serving.api.build_app` mounts each under `/v1`."""
