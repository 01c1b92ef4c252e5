"""The live sale page at `/`: plain HTML, CSS and JavaScript from ingest/static, no build step.

The page reads only the public API and the buyer's own purchase. It holds no secret of its own:
the buyer's token lives in the page's memory, from the dev token helper (development stacks
only) or pasted by the buyer. What the page needs to know of this server is written into
`index.html` once, at start.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from config.settings import Settings

STATIC = resources.files("ingest").joinpath("static")
_CONTENT_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}
# Everything from this origin, nothing inline, no framing: a script injected into a purchase
# field could neither run nor phone home.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str, settings: Settings) -> tuple[bytes, str]:
    """(body, content type) of a static file; index.html with this server's facts written in."""
    body = STATIC.joinpath(name).read_text()
    if name == "index.html":
        body = (body.replace("{{dev_tokens}}", "true" if settings.dev_token_endpoint else "false")
                .replace("{{qty_max}}", str(settings.qty_max))
                .replace("{{currency}}", settings.psp_currency.upper()))
    return body.encode(), _CONTENT_TYPES[name[name.rindex("."):]]


def setup(app: web.Application, settings: Settings) -> None:
    assets = {name: _asset(name, settings) for name in ("index.html", "sale.css", "sale.js")}

    def serve(name: str) -> web.Response:
        body, content_type = assets[name]
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_HEADERS)

    async def index(request: web.Request) -> web.Response:
        return serve("index.html")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in assets or name == "index.html":
            raise web.HTTPNotFound(text="no such static file")
        return serve(name)

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
