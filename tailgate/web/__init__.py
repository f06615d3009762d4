"""The dashboard at ``/ui/``: server-rendered pages over the request log, the config and the quotas.

Mount it with ``gateway.mount(register_dashboard)``. Pages are Jinja2 templates (autoescaped)
with one stylesheet and a little optional JavaScript; charts are inline SVG drawn in Python;
nothing is fetched from anywhere else. Non-admins see only their own data; forms that change
anything are refused when a browser sends them from another site.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tailgate.errors import GatewayError, NotFound
from tailgate.http.messages import Request, Response
from tailgate.web import dashboard, logs, models, quickstart, quotas, settings, usage
from tailgate.web.common import Viewer, Web, page

if TYPE_CHECKING:
    from tailgate.app import Gateway
    from tailgate.router import Router

__all__ = ["register_dashboard"]


def register_dashboard(gateway: Gateway, router: Router) -> None:
    """Add the dashboard's routes to ``router``."""
    web = Web(gateway)

    async def to_index(request: Request) -> Response:
        return Response.redirect("/ui/", 308)

    async def unknown(request: Request) -> Response:
        viewer: Viewer | None = None
        try:
            viewer = await web.viewer(request)
        except GatewayError:  # the 404 page renders even for a caller without a role
            viewer = None
        return web.error_page(NotFound(f"there is no dashboard page at {request.path}"), viewer)

    router.add("GET", "/ui", to_index)
    router.add("GET", "/ui/", page(web, dashboard.own_dashboard))
    router.add_prefix("GET", "/ui/dashboard/", page(web, dashboard.principal_dashboard))
    router.add("GET", "/ui/logs", page(web, logs.logs))
    router.add_prefix("GET", "/ui/logs/sessions/", page(web, logs.session))
    router.add_prefix("GET", "/ui/logs/", page(web, logs.request_detail))
    router.add("GET", "/ui/usage", page(web, usage.usage_page, admin=True))
    router.add("GET", "/ui/usage.csv", page(web, usage.usage_csv))
    router.add("GET", "/ui/models", page(web, models.models_page))
    router.add("GET", "/ui/quotas", page(web, quotas.quotas_page))
    router.add("POST", "/ui/quotas/refill", page(web, quotas.refill, admin=True))
    router.add("GET", "/ui/settings", page(web, settings.settings_page, admin=True))
    router.add("POST", "/ui/settings", page(web, settings.post_config, admin=True))
    router.add("POST", "/ui/settings/keys", page(web, settings.create_key, admin=True))
    router.add("POST", "/ui/settings/keys/revoke", page(web, settings.revoke_key, admin=True))
    router.add("GET", "/ui/quickstart", page(web, quickstart.quickstart_page))
    router.add_prefix("GET", "/ui/static/", web.serve_static)
    router.add_prefix("GET", "/ui/", unknown)
