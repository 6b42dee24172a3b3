"""
### t120_reduce: cosmetic and astrometric reduction of OHP T120 nights

One scheduled run per observing night: the run whose data interval starts at local noon
(Europe/Paris) on day D reduces night **D** (its evening), once the night has ended, at noon on
D+1. A manual run reduces `first_night`..`last_night` (empty `last_night`: the run's own night);
years are reprocessed with `airflow backfill create` (see README).

Shape (the stages of `ar_tasks.nightplan`, the plan the `astro_reduce` command runs too):
list the nights with raw data → per night: `prepare_night` (inventory, masters, master PNGs) →
`plan_groups` collects the (night, group) pairs → per (night, group): `reduce_group`
(calibrate, align, stack, PNGs) → per (night, group), only when an astrometry route is asked:
`solve_group` (pool `astrometry`) → per night: `publish` writes `manifest.json`.
A night whose products are all current (same frames, params and code) is dropped by
`list_nights` after one cheap check (stamps and listings, no frame read); one whose frames
were touched but not changed stops after its `prepare_night` and is not published again.
A run whose only work would be nights that failed before for the same night key (every task
of theirs finished) fails at `list_nights` with their reasons; `overwrite` reduces them anyway.
Astrometry (param `astrometry`) writes `reduced/` with the solved WCS; an image that does not
solve fails its night's manifest.
Every task calls one `ar_tasks` function and passes small dicts through XCom.
Products: `<products_root>/<night>/` in astro_reduce's layout.
A night that cannot make a master (no darks of an exposure, no flats in a filter) borrows
the nearest usable one of another night of the raw archive, within `dark_window_days` and
`flat_window_days` (scheduled runs: earlier nights only); the library of borrowed masters is
`<products_root>/ar_calibrations/`, and every product names its masters' night.
A night whose masters are missing fails only its own branch, with the reason in its manifest;
errors that a retry would meet again (no calibrations, bad params) are not retried.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task

NIGHT_OR_EMPTY = {"type": ["null", "string"], "format": "date"}


def _params(label: str) -> dict:
    """The run's params, after naming this mapped instance (`map_index_template="{{ label }}"`)."""
    context = get_current_context()
    context["label"] = label  # type: ignore[typeddict-unknown-key]
    return context["params"]


def _results(prepared: object) -> list[dict]:
    """The prepared nights' results as a list (one night comes as a bare dict; a night whose
    preparation failed has none), only those of this try's batch of nights: when a run is
    cleared and rerun, a mapped instance that is now removed keeps its XCom, which would hand
    on the groups of a night that is current now (or a night twice). The nights are pulled,
    not passed: when list_nights failed there are none, and nothing is to be planned."""
    nights = get_current_context()["ti"].xcom_pull(task_ids="list_nights") or []
    batches = {night["batch"] for night in nights}
    results = [prepared] if isinstance(prepared, dict) else list(prepared or [])
    return [r for r in results if r and r.get("batch") in batches]


def _run_params(params: Any) -> dict:
    """The run's params for ar_tasks, plus what the run's type decides: a scheduled run
    borrows masters only from earlier nights (it must not depend on nights still to come)."""
    run_type = get_current_context()["dag_run"].run_type
    scheduled = getattr(run_type, "value", run_type) == "scheduled"
    return {**dict(params), "calibrations_past_only": scheduled}


def _stage(name: str, label: str, night: str, **extra: Any) -> dict:
    """Run one stage of the night plan (a function of ar_tasks.pipeline) with the run's params,
    after naming this mapped instance `label`."""
    from ar_tasks import pipeline

    params = _params(label)
    return _deterministic(
        getattr(pipeline, name),
        params["raw_root"],
        params["products_root"],
        night,
        params=_run_params(params),
        settings=_astrometry_settings(params),
        s3=_s3(params),
        **extra,
    )


def _deterministic(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call an ar_tasks stage; an error that a retry would meet again (no calibrations, bad
    params, a step's own failure) fails the task at once, without retries. Others (S3,
    network, a killed worker) keep the DAG's retries."""
    from airflow.sdk.exceptions import AirflowFailException

    from ar_tasks.pipeline import DETERMINISTIC

    try:
        return function(*args, **kwargs)
    except DETERMINISTIC as exc:
        raise AirflowFailException(str(exc)) from None


def _astrometry_settings(params: dict) -> dict:
    """AstrometryOptions fields from the params; the API key from the connection, never
    from params (they are shown in the UI and stored in the manifest)."""
    settings = {
        field: params[name]
        for name, field in (
            ("refcat", "refcat"),
            ("refcat_cache", "refcat_cache"),
            ("anet_index", "index_dir"),
        )
        if params[name]
    }
    settings["solve_each"] = bool(params.get("solve_each", False))
    if params["astrometry"] == "astrometrynet_online":
        from ar_tasks.anet_online import OnlineSettings

        key, server = _astrometry_net_credentials(params["astrometry_net_conn_id"])
        settings["online_settings"] = OnlineSettings(api_key=key, server=server)
    return settings


def _s3(params: dict) -> dict:
    """S3Settings fields from the params' AWS connection (empty: boto3's own environment,
    profiles and AWS_ENDPOINT_URL). Only called when a root is s3://."""
    if not any(str(params[r]).startswith("s3://") for r in ("raw_root", "products_root")):
        return {}
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(params["aws_conn_id"])
    except AirflowNotFoundException:
        return {}
    extra = conn.extra_dejson
    return {
        "endpoint_url": extra.get("endpoint_url", ""),
        "access_key": conn.login or "",
        "secret_key": conn.password or "",
        "region": extra.get("region_name", ""),
    }


def _astrometry_net_credentials(conn_id: str) -> tuple[str, str]:
    """(API key, server URL) from an Airflow connection; empty values fall back to the
    environment (AR_ASTROMETRY_NET_API_KEY, AR_ASTROMETRY_NET_URL) in ar_tasks."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return "", ""
    host = conn.host or ""
    if host and "://" not in host:
        host = f"{conn.schema or 'https'}://{host}"
    if host and conn.port:
        host = f"{host}:{conn.port}"
    return conn.password or "", host


PRODUCTS_URL = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|/.*)$"


@dag(
    dag_id="t120_reduce",
    schedule=CronDataIntervalTimetable("0 12 * * *", timezone="Europe/Paris"),
    start_date=dt.datetime(2015, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=2,
    # Task instances of a night are mostly start-up cost: let the workers' slots, not the
    # DAG, be the limit (2 runs x the groups of a night).
    max_active_tasks=16,
    tags=["t120", "reduction", "astro_reduce"],
    doc_md=__doc__,
    default_args={"owner": "t120", "retries": 2, "retry_delay": dt.timedelta(minutes=1)},
    params={
        "first_night": Param(
            None,
            **NIGHT_OR_EMPTY,
            title="First night (YYYY-MM-DD)",
            description="Empty: the run's own night.",
        ),
        "last_night": Param(
            None,
            **NIGHT_OR_EMPTY,
            title="Last night (YYYY-MM-DD)",
            description="Empty: same as the first night.",
        ),
        "raw_root": Param(
            os.environ.get("AR_RAW_ROOT", "/data/t120/raw"),
            type="string",
            pattern=PRODUCTS_URL,
            title="Raw archive root (absolute path or s3://bucket/prefix; only ever read)",
        ),
        "products_root": Param(
            os.environ.get("AR_PRODUCTS_ROOT", "/data/t120/products"),
            type="string",
            pattern=PRODUCTS_URL,
            title="Products root (absolute path or s3://bucket/prefix)",
        ),
        "interpolate": Param(True, type="boolean", title="Interpolate missing master darks"),
        "dark_window_days": Param(
            90,
            type="number",
            minimum=0,
            title="Borrow master darks from nights within this many days (0: never)",
            description="A night without its own darks of an exposure uses the nearest night "
            "of the raw archive that has them (scheduled runs: earlier nights only).",
        ),
        "flat_window_days": Param(
            30,
            type="number",
            minimum=0,
            title="Borrow master flats from nights within this many days (0: never)",
        ),
        "stack": Param(True, type="boolean", title="Align and stack each group"),
        "frame_rejection": Param(
            True,
            type="boolean",
            title="Leave clouded, trailed and blurred frames out of the stacks",
            description="Off: every frame that registers is stacked. Frames that do not "
            "register (another field, too few stars) are always left out.",
        ),
        "max_fwhm_ratio": Param(
            1.5,
            type="number",
            minimum=1,
            title="Leave out frames whose FWHM exceeds this times the group's sharpest",
            description="Frames sharper than 2.5 arcsec are always kept.",
        ),
        "max_ellipticity": Param(
            0.25,
            type="number",
            exclusiveMinimum=0,
            exclusiveMaximum=1,
            title="Leave out frames whose stars are more elongated than this (1 - b/a)",
            description="And 0.1 more than the group's roundest frame: a group trailed alike "
            "keeps its frames.",
        ),
        "min_transparency": Param(
            0.6,
            type="number",
            minimum=0,
            maximum=1,
            title="Leave out frames whose stars are fainter than this fraction of the clearest",
        ),
        "png": Param(True, type="boolean", title="PNG quick-looks"),
        "astrometry": Param(
            "none",
            type="string",
            enum=["none", "astromatic", "astrometrynet_local", "astrometrynet_online"],
            title="Astrometric reduction",
            description="astromatic: SExtractor, PSFEx, SExtractor with the PSF, SCAMP. "
            "astrometrynet_local: solve-field with the index folder below. "
            "astrometrynet_online: nova.astrometry.net (key: connection below).",
        ),
        "solve_each": Param(
            False,
            type="boolean",
            title="Solve every image on its own",
            description="Off: each group is solved once (its stack) and every frame's WCS is "
            "derived from the registration and checked on its own stars.",
        ),
        "refcat": Param(
            os.environ.get("AR_REFCAT") or None,
            type=["null", "string"],
            title="SCAMP reference catalogue file (FITS table with RA, DEC, MAG)",
            description="Empty: the per-field cache below, else SCAMP queries GAIA-EDR3 online.",
        ),
        "refcat_cache": Param(
            os.environ.get("AR_REFCAT_CACHE") or None,
            type=["null", "string"],
            title="Folder of per-field Gaia DR3 catalogues (fetched once, then reused)",
        ),
        "anet_index": Param(
            os.environ.get("AR_ANET_INDEX_DIR") or None,
            type=["null", "string"],
            title="astrometry.net index folder (empty: /usr/share/astrometry)",
        ),
        "aws_conn_id": Param(
            "aws_default",
            type="string",
            title="Connection for s3:// roots (login/password, extra endpoint_url, region_name)",
        ),
        "astrometry_net_conn_id": Param(
            "astrometry_net",
            type="string",
            title="Connection holding the astrometry.net API key (password) and server (host)",
        ),
        "objects": Param(
            [], type="array", items={"type": "string"}, title="Only these objects (empty: all)"
        ),
        "filters": Param(
            [], type="array", items={"type": "string"}, title="Only these filters (empty: all)"
        ),
        "overwrite": Param(False, type="boolean", title="Recompute current products"),
    },
)
def t120_reduce() -> None:
    @task.short_circuit
    def list_nights() -> list[dict]:
        """Nights in the requested range that have raw data and work to do: a night whose
        manifest, inventory stamps and products are current (see pipeline.night_state)
        is not handed on: its tasks are skipped. Nights without raw data are skipped, not
        failed. Each night comes with this try's batch id, which its results carry (see
        _results). No night to reduce:
        every other task is skipped at once (a short circuit), and the run ends a success; or,
        when some of its nights failed before with the same frames, params and code (every
        task of theirs finished), this task fails at once with their reasons, unretried."""
        import uuid

        from airflow.sdk.exceptions import AirflowFailException

        from ar_tasks import nights, pipeline

        context = get_current_context()
        params = context["params"]
        _deterministic(
            pipeline.check_roots, params["raw_root"], params["products_root"], _s3(params)
        )
        first, last = nights.run_range(
            params["first_night"],
            params["last_night"],
            context.get("data_interval_start"),
            context["dag_run"].run_after,
        )
        found = nights.nights_with_raw_data(params["raw_root"], first, last, _s3(params))
        print(f"Nights {first}..{last} with raw data: {found or 'none'}")
        choice = _deterministic(
            pipeline.nights_to_reduce,
            params["raw_root"],
            params["products_root"],
            found,
            _run_params(params),
            settings=_astrometry_settings(params),
            s3=_s3(params),
        )
        for night, problems in choice.failed.items():
            print(
                f"Night {night} failed before with the same frames, params and code (its "
                f"manifest): {'; '.join(problems[:3])}{' ...' if len(problems) > 3 else ''}"
            )
        if choice.failed and not choice.todo:
            raise AirflowFailException(
                f"{', '.join(choice.failed)}: would fail again as before (see above); nothing "
                "was run. Fix the night's files, or set overwrite to reduce it anyway."
            )
        # With other nights to reduce, the failed ones are tried again beside them.
        todo = sorted(choice.todo + list(choice.failed))
        if todo != found:
            print(f"Current (nothing to do): {sorted(set(found) - set(todo))}; to reduce: {todo}")
        batch = uuid.uuid4().hex[:12]
        return [{"night": night, "batch": batch} for night in todo]

    @task(map_index_template="{{ label }}")
    def prepare_night(night: str, batch: str) -> dict:
        """Inventory and masters of one night; the groups ready to reduce (none when every
        product of the night is current)."""
        return {**_stage("prepare_night", night, night), "batch": batch}

    @task(trigger_rule="all_done")
    def plan_groups(prepared: object) -> list[dict]:
        """The (night, group) pairs to reduce, from every night that was prepared."""
        return [pair for r in _results(prepared) for pair in r["groups"]]

    @task(trigger_rule="all_done")
    def plan_solves(prepared: object) -> list[dict]:
        """The same pairs to solve when an astrometry route is asked, else none: no idle task
        instance takes an `astrometry` pool slot or a worker."""
        return [pair for r in _results(prepared) if r["solve"] for pair in r["groups"]]

    @task(map_index_template="{{ label }}")
    def reduce_group(night: str, group: dict, label: str) -> dict:
        """Calibrate, align, stack and preview one (object, filter, exposure) group."""
        return _stage("reduce_group", label, night, group=group)

    @task(pool="astrometry", trigger_rule="all_done", map_index_template="{{ label }}")
    def solve_group(night: str, group: dict, label: str) -> dict:
        """Plate solving of the group's aux frames and stack, in the `astrometry` pool."""
        return _stage("solve_group", label, night, group=group)

    @task(trigger_rule="all_done", map_index_template="{{ label }}")
    def publish(night: str, batch: str) -> dict:
        """Write the night's manifest; fail this night's branch if anything in it failed
        (`batch`: see list_nights)."""
        from airflow.sdk.exceptions import AirflowFailException

        context = get_current_context()
        run = {"dag_id": context["dag"].dag_id, "run_id": context["run_id"]}
        summary = _stage("publish_night", night, night, run=run)
        if summary["status"] != "success":
            raise AirflowFailException(f"night {night}: " + "; ".join(summary["problems"]))
        return summary

    nights = list_nights()
    prepared = prepare_night.expand_kwargs(nights)
    reduced = reduce_group.expand_kwargs(plan_groups(prepared))
    solved = solve_group.expand_kwargs(plan_solves(prepared))
    reduced >> solved
    [reduced, solved] >> publish.expand_kwargs(nights)


t120_reduce()
