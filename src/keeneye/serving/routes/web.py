"""The web page: server-rendered, no CDN, works offline."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, select_autoescape

from keeneye.serving.routes.deps import StateDep

router = APIRouter(include_in_schema=False)
_templates = Jinja2Templates(
    env=Environment(loader=PackageLoader("keeneye.web", "templates"), autoescape=select_autoescape())
)


@router.get("/", response_class=HTMLResponse)
def index(request: Request, state: StateDep) -> HTMLResponse:
    name = state.settings.serving.default_pipeline
    served = state.runtime.served().get(name)
    return _templates.TemplateResponse(
        request,
        "predict.html",
        {
            "pipeline": name,
            "pipelines": state.catalog.names(),
            "model_version": served.version if served else None,
        },
    )
