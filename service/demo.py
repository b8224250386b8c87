"""The demo page: a static HTML/CSS/JS page at ``/`` that calls the JSON API from the browser.

No build step, no CDN, nothing fetched at run time: the files ship in ``service/static/`` and the
page only talks to its own origin (the Content-Security-Policy below says so to the browser).
Include it in the app with ``route_handlers=[..., demo_router()]``.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Response, Router, get
from litestar.enums import MediaType
from litestar.static_files import create_static_files_router

STATIC_DIR = Path(__file__).parent / "static"

# Same origin only: scripts, styles and API calls; no inline script, no external font or image.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

# Litestar's authentication middleware skips handlers whose opt carries this key: the page itself
# holds no data, the API calls it makes carry the key the user types in.
PUBLIC = {"exclude_from_auth": True}


def demo_router(static_dir: Path = STATIC_DIR) -> Router:
    """Routes for the demo: ``GET /`` (index.html) and ``GET /static/{file_path}`` (CSS, JS)."""
    index_html = (static_dir / "index.html").read_bytes()

    @get("/", media_type=MediaType.HTML, include_in_schema=False, sync_to_thread=False, opt=PUBLIC)
    def demo_index() -> Response[bytes]:
        return Response(
            index_html,
            media_type=MediaType.HTML,
            headers={
                "content-security-policy": CONTENT_SECURITY_POLICY,
                "x-content-type-options": "nosniff",
                "cache-control": "no-cache",
            },
        )

    static = create_static_files_router(
        path="/static", directories=[static_dir], name="demo-static", opt=PUBLIC
    )
    return Router(path="/", route_handlers=[demo_index, static], include_in_schema=False)
