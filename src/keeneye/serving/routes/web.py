"""The predict page: server-rendered, no CDN, works offline.

One page serves every pipeline: its title and description come from the pipeline spec, the served
model version from the runtime (the page asks ``GET /v1/pipelines/{name}`` again when the pipeline is
switched). ``?pipeline=NAME`` opens it on a pipeline; unknown names get the 404 page.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from keeneye.domain import JsonObject
from keeneye.serving.routes.deps import VIEWER, StateDep
from keeneye.serving.routes.shell import templates
from keeneye.serving.state import AppState

router = APIRouter(include_in_schema=False, dependencies=[VIEWER])

# what the file chooser offers per accepted format
_ACCEPT = {"jpeg": "image/jpeg,.jpg,.jpeg", "png": "image/png,.png", "tiff": "image/tiff,.tif,.tiff"}


def pipeline_card(state: AppState, name: str) -> JsonObject:
    """What the page shows of one pipeline (also embedded as JSON for switching without a reload)."""
    spec = state.catalog.get(name)
    served = state.runtime.served().get(name)
    return {
        "name": name,
        "title": spec.title or name,
        "description": spec.description,
        "task": spec.task.value,
        "decision": spec.decision.kind == "ok-defect",
        "formats": list(spec.input.formats),
        "accept": ",".join(_ACCEPT[f] for f in spec.input.formats if f in _ACCEPT),
        "served_version": served.version if served else None,
    }


@router.get("/predict", response_class=HTMLResponse)
def predict_page(
    request: Request, state: StateDep, pipeline: str | None = Query(None, description="open on this one")
) -> HTMLResponse:
    name = pipeline or state.settings.serving.default_pipeline
    state.catalog.get(name)  # NotFound → the 404 page, naming the pipelines
    cards = [pipeline_card(state, n) for n in state.catalog.names()]
    current = next(c for c in cards if c["name"] == name)
    return templates.TemplateResponse(
        request,
        "predict.html",
        {
            "pipeline": name,
            "pipelines": state.catalog.names(),
            "current": current,
            "cards": cards,
            "model_version": current["served_version"],
        },
    )
