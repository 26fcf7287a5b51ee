"""The BentoML service: `bentoml serve markguard.serving.service:Markguard` (or `markguard serve`).

Each worker loads the promoted model and the index once, from the home named by MARKGUARD_HOME.
Every call but BentoML's health, readiness and metrics routes needs `Authorization: Bearer <key>`;
the key decides the tenant and role.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml

from markguard.vision.decode import MAX_BYTES
from markguard.vision.errors import ImageError, MarkguardError, NotFound

__all__ = ["Markguard"]

SCORING_ROLES = ("admin", "platform")


def _threads() -> int:
    return max(1, int(os.environ.get("MARKGUARD_THREADS", "0")) or (os.cpu_count() or 1))


@bentoml.service(name="markguard", traffic={"timeout": 120}, workers=1)
class Markguard:
    def __init__(self) -> None:
        import cv2
        import torch

        from markguard.serving.engine import ScoringEngine
        from markguard.serving.state.home import Home

        torch.set_num_threads(_threads())
        cv2.setNumThreads(_threads())
        self.home = Home(os.environ.get("MARKGUARD_HOME", ".markguard"))
        self.engine = ScoringEngine(self.home)

    def _principal(self, ctx: bentoml.Context, roles: tuple[str, ...]) -> Any:
        from markguard.serving.keys import authenticate

        header = ctx.request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else None
        principal = authenticate(self.home, token)
        if principal is None:
            ctx.response.status_code = 401
            ctx.response.headers["WWW-Authenticate"] = "Bearer"
            return None
        if principal.role.value not in roles:
            ctx.response.status_code = 403
            return None
        return principal

    @bentoml.api(route="/score")
    def score(
        self,
        image: Path,
        ctx: bentoml.Context,
        brand: str | None = None,
        product: str | None = None,
        listing_id: str | None = None,
        seller_id: str | None = None,
        title: str | None = None,
    ) -> dict[str, Any]:
        """Score one listing photo (multipart `image`); returns the score JSON of ARCHITECTURE.md."""
        from markguard.serving.engine import ScoreRequest

        if self._principal(ctx, SCORING_ROLES) is None:
            return {"error": "missing or invalid API key" if ctx.response.status_code == 401 else "forbidden"}
        size = image.stat().st_size
        if size > MAX_BYTES:
            ctx.response.status_code = 413
            return {"error": f"image larger than {MAX_BYTES} bytes"}
        try:
            request = ScoreRequest(image.read_bytes(), brand=brand or None, product=product or None,
                                   seller=seller_id or None, listing=listing_id or None)
            return self.engine.score(request).to_dict()
        except ImageError as exc:
            ctx.response.status_code = 415 if "not a JPEG" in str(exc) else 422
            return {"error": str(exc)}
        except NotFound as exc:
            ctx.response.status_code = 404
            return {"error": str(exc)}
        except (MarkguardError, ValueError) as exc:
            ctx.response.status_code = 400
            return {"error": str(exc)}
