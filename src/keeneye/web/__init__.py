"""Server-rendered pages and their static assets (no CDN: everything ships in the package).

:data:`VENDOR` is the one place the vendored third-party files are spelled (their versions are in the
folder names; ``static/vendor/README.md`` says where each came from). :data:`NAV` is the app shell's
navigation, in order; ``templates/base.html`` draws it and marks the page whose prefix matches.
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import Environment, PackageLoader, select_autoescape

STATIC_URL = "/static"
SWAGGER_UI = "vendor/swagger-ui-dist-5.35.0"
REDOC = "vendor/redoc-2.5.4"
UPLOT = "vendor/uplot-1.6.32"
VIS_TIMELINE = "vendor/vis-timeline-8.5.4"
FFLATE = "vendor/fflate-0.8.3"
LEAFLET = "vendor/leaflet-1.9.4"

VENDOR: dict[str, str] = {
    "swagger_js": f"{STATIC_URL}/{SWAGGER_UI}/swagger-ui-bundle.js",
    "swagger_css": f"{STATIC_URL}/{SWAGGER_UI}/swagger-ui.css",
    "redoc_js": f"{STATIC_URL}/{REDOC}/redoc.standalone.js",
    "uplot_js": f"{STATIC_URL}/{UPLOT}/uPlot.iife.min.js",
    "uplot_css": f"{STATIC_URL}/{UPLOT}/uPlot.min.css",
    "vis_timeline_js": f"{STATIC_URL}/{VIS_TIMELINE}/vis-timeline-graph2d.min.js",
    "vis_timeline_css": f"{STATIC_URL}/{VIS_TIMELINE}/vis-timeline-graph2d.min.css",
    "fflate_js": f"{STATIC_URL}/{FFLATE}/fflate.umd.js",
    "leaflet_js": f"{STATIC_URL}/{LEAFLET}/leaflet.js",
    "leaflet_css": f"{STATIC_URL}/{LEAFLET}/leaflet.css",
}
FAVICON = f"{STATIC_URL}/favicon.svg"


@dataclass(frozen=True)
class NavItem:
    """One entry of the shell's navigation: marked current when the path starts with a prefix."""

    key: str
    label: str
    href: str
    prefixes: tuple[str, ...]

    def matches(self, path: str) -> bool:
        if self.href == "/":
            return path == "/"
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.prefixes) or any(
            path.startswith("/pipelines/") and path.endswith(p) for p in self.prefixes
        )


NAV: tuple[NavItem, ...] = (
    NavItem("overview", "Overview", "/", ("/",)),
    NavItem("predict", "Predict", "/predict", ("/predict",)),
    NavItem("review", "Review", "/review", ("/review",)),
    NavItem("monitoring", "Monitoring", "/monitoring", ("/monitoring",)),
    NavItem("lines", "Lines", "/lines", ("/lines",)),
    NavItem("fields", "Fields", "/fields", ("/fields",)),
    NavItem("models", "Models", "/models", ("/models",)),
    NavItem("runs", "Runs", "/runs", ("/runs",)),
    NavItem("alerts", "Alerts", "/alerts", ("/alerts",)),
    NavItem("observations", "Observations", "/observations", ("/observations",)),
    NavItem("smartcut", "Smartcut", "/smartcut", ("/smartcut",)),
    NavItem("system", "System", "/system", ("/system",)),
    NavItem("docs", "API docs", "/docs", ("/docs", "/redoc")),
)


def current_nav(path: str) -> str | None:
    """The key of the navigation entry a path belongs to (``/pipelines/x/review`` → ``review``)."""
    for item in NAV:
        if item.matches(path):
            return item.key
    return None


def format_ms(value: float | None) -> str:
    """A latency for people: ``43.2 ms``, or seconds from 1000 ms on (``16.4 s``); ``–`` when unknown."""
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value / 1000:.1f} s"
    return f"{value:.1f} ms"


def environment() -> Environment:
    """The Jinja environment of every page: autoescaped, with the shell's navigation and assets."""
    env = Environment(loader=PackageLoader("keeneye.web", "templates"), autoescape=select_autoescape())
    env.globals.update(nav=NAV, current_nav=current_nav, vendor=VENDOR, favicon=FAVICON)
    env.filters["ms"] = format_ms
    return env


__all__ = ["FAVICON", "NAV", "STATIC_URL", "VENDOR", "NavItem", "current_nav", "environment", "format_ms"]
