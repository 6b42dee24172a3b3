"""The night browser's FastAPI app, mounted by the plugin at /t120 on Airflow's API server.

Every endpoint needs an Airflow login with read access to t120_reduce's runs (a plugin's app
is open by default: `require_reader`). Pages read products through ar_tasks (never write);
reprocessing is Airflow's own REST API, called from the page with the user's session.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from . import pages
from .products import NIGHT, SERVED, NotServed, Products

URL_PREFIX = "/t120"
SUMMARY_NIGHTS = 10
SUMMARY_JS = """
(function () {
  const h = React.createElement;
  function T120Summary() {
    const [data, setData] = React.useState(null);
    React.useEffect(() => {
      fetch('__PREFIX__/api/summary', {credentials: 'same-origin'})
        .then((r) => r.json()).then(setData).catch(() => setData({error: true}));
    }, []);
    if (!data) return h('div', null, 'T120 nights ...');
    if (data.error) return h('div', null, 'T120 nights: not available');
    return h('div', {style: {padding: '8px'}},
      h('strong', null, 'T120 nights: ' + data.nights + ' reduced, ' + data.failed + ' failed'),
      h('ul', null, data.last.map((n) => h('li', {key: n.night},
        h('a', {href: '/plugin/t120-nights__PREFIX__/night/' + n.night}, n.night), ' ' + n.status +
        (n.problem ? ': ' + n.problem : '')))));
  }
  globalThis['T120 summary'] = T120Summary;
  globalThis.AirflowPlugin = T120Summary;
})();
""".replace("__PREFIX__", URL_PREFIX)


BEARER = HTTPBearer(auto_error=False)


async def require_reader(
    request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
) -> Any:
    """The logged-in Airflow user, who may read t120_reduce's runs (401 without a login, 403
    with a bad token or without the permission)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )
    from airflow.api_fastapi.core_api.security import get_user

    user = await get_user(request, None, bearer)
    allowed = get_auth_manager().is_authorized_dag(
        method="GET",
        access_entity=DagAccessEntity.RUN,
        details=DagDetails(id=pages.DAG_ID),
        user=user,
    )
    if not allowed:
        raise HTTPException(status_code=403, detail="no read access to t120_reduce's runs")
    return user


def airflow_run(dag_id: str, run_id: str) -> dict[str, Any] | None:
    """A DAG run's conf, data interval start and run_after, from Airflow's database."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if run is None:
            return None
        return {
            "conf": dict(run.conf or {}),
            "data_interval_start": run.data_interval_start,
            "run_after": run.run_after,
        }


def airflow_task_label(dag_id: str, run_id: str, task_id: str, map_index: int) -> str | None:
    """A task instance's map index label (t120_reduce's: '<night>' or '<night> <group>')."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(
            select(TaskInstance.rendered_map_index).where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.task_id == task_id,
                TaskInstance.map_index == map_index,
            )
        )


def products() -> Products:
    """The products root the pages read (AR_PRODUCTS_ROOT): a dependency tests override."""
    return Products()


def run_lookup() -> Any:
    return airflow_run


def label_lookup() -> Any:
    return airflow_task_label


def create_app() -> FastAPI:
    app = FastAPI(
        title="T120 night browser",
        description="Nights, products, QC and reprocessing of the OHP T120 archive.",
        dependencies=[Depends(require_reader)],
    )
    base = URL_PREFIX

    @app.get("/", response_class=HTMLResponse)
    def nights(
        store: Annotated[Products, Depends(products)],
        status: str = "",
        first: str = "",
        last: str = "",
    ) -> str:
        every = store.nights()
        chosen = [
            entry
            for entry in every
            if (not status or entry.get("status") == status)
            and (not first or str(entry["night"]) >= first)
            and (not last or str(entry["night"]) <= last)
        ]
        filters = {"status": status, "first": first, "last": last}
        return pages.nights_page(chosen, filters, base, len(every))

    @app.get("/night/{night}", response_class=HTMLResponse)
    def night(night: str, store: Annotated[Products, Depends(products)]) -> str:
        manifest = _manifest(store, night)
        return pages.night_page(night, manifest, store.pictures(night), base)

    @app.get("/night/{night}/file/{relpath:path}")
    def night_file(
        night: str, relpath: str, store: Annotated[Products, Depends(products)]
    ) -> Response:
        try:
            payload = store.read(night, relpath)
        except NotServed as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        suffix = "." + relpath.rsplit(".", 1)[-1].lower()
        return Response(payload, media_type=SERVED[suffix])

    @app.get("/trends", response_class=HTMLResponse)
    def trends_view(first: str = "", last: str = "") -> str:
        return pages.trends_page(first, last, base)

    @app.get("/trends.png")
    def trends_png(
        store: Annotated[Products, Depends(products)], first: str = "", last: str = ""
    ) -> Response:
        from ar_tasks import trends

        data = trends.series(store.nights(), first or None, last or None)
        title = f"T120 archive {first or 'start'} .. {last or 'end'}"
        return Response(trends.draw(data, title), media_type="image/png")

    @app.get("/run/{dag_id}/{run_id}", response_class=HTMLResponse)
    def run_view(
        dag_id: str,
        run_id: str,
        store: Annotated[Products, Depends(products)],
        lookup: Annotated[Any, Depends(run_lookup)],
    ) -> str:
        if dag_id != pages.DAG_ID:
            return pages.not_t120(dag_id, base)
        run = lookup(dag_id, run_id)
        if run is None:
            raise HTTPException(status_code=404, detail=f"no run {run_id} of {dag_id}")
        nights = _run_nights(run)
        entries = {str(e["night"]): e for e in store.nights()}
        return pages.run_page(run_id, nights, entries, base)

    @app.get("/ti/{dag_id}/{run_id}/{task_id}/{map_index}", response_class=HTMLResponse)
    def task_view(
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: int,
        store: Annotated[Products, Depends(products)],
        lookup: Annotated[Any, Depends(label_lookup)],
    ) -> str:
        if dag_id != pages.DAG_ID:
            return pages.not_t120(dag_id, base)
        label = lookup(dag_id, run_id, task_id, map_index) if map_index >= 0 else None
        night, group = _night_and_group(label or "")
        manifest = None
        if night is not None:
            try:
                manifest = store.manifest(night)
            except NotServed:
                manifest = None
        if manifest is not None and group is not None:
            group = _group_name(manifest, group)
        return pages.task_page(night, group, manifest, base)

    @app.get("/api/summary")
    def summary(store: Annotated[Products, Depends(products)]) -> JSONResponse:
        every = store.nights()
        last = [
            {"night": e["night"], "status": e.get("status"), "problem": e.get("problem")}
            for e in reversed(every[-SUMMARY_NIGHTS:])
        ]
        failed = sum(1 for e in every if e.get("status") != "success")
        return JSONResponse({"nights": len(every), "failed": failed, "last": last})

    @app.get("/static/summary.js")
    def summary_js() -> Response:
        return Response(SUMMARY_JS, media_type="text/javascript")

    return app


def _manifest(store: Products, night: str) -> dict[str, Any]:
    try:
        return store.manifest(night)
    except NotServed as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


def _run_nights(run: dict[str, Any]) -> list[str]:
    from ar_tasks import nights

    conf = run.get("conf") or {}
    run_after = run.get("run_after") or dt.datetime.now(dt.UTC)
    try:
        first, last = nights.run_range(
            conf.get("first_night"),
            conf.get("last_night"),
            run.get("data_interval_start"),
            run_after,
        )
        return nights.night_range(first, last)
    except ValueError:
        return []


def _night_and_group(label: str) -> tuple[str | None, str | None]:
    """'2023-05-10' -> (night, None); '2023-05-10 M-67 V 60s' -> (night, 'M-67 V 60s')."""
    night, _, rest = label.strip().partition(" ")
    if not NIGHT.match(night):
        return None, None
    return night, rest.strip() or None


def _group_name(manifest: dict[str, Any], label: str) -> str | None:
    """The manifest's group whose label ('M-67 V 60s') is `label`."""
    from ar_tasks.inventory import GroupKey

    for name in manifest.get("groups") or {}:
        try:
            if GroupKey.parse(name).label == label:
                return name
        except ValueError:
            continue
    return None


app = create_app()
