"""Shared builders for the dashboards: one way to make a query, a time series, a stat,
a table, the template variables and the regression annotations, so that every
dashboard gets the same datasource, legend, units and threshold colours."""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import prometheus as gprom
from grafana_foundation_sdk.builders import stat as gstat
from grafana_foundation_sdk.builders import table as gtable
from grafana_foundation_sdk.builders import timeseries as gts
from grafana_foundation_sdk.builders.common import (GraphThresholdsStyleConfig, ReduceDataOptions,
                                                    StackingConfig, VizLegendOptions)
from grafana_foundation_sdk.models import common as mcommon
from grafana_foundation_sdk.models import dashboard as mdash
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from . import config

DATASOURCE = mdash.DataSourceRef(type_val=config.DATASOURCE_TYPE, uid=config.DATASOURCE_UID)
GRAFANA_DATASOURCE = mdash.DataSourceRef(type_val="grafana", uid="-- Grafana --")

# (value from which, colour): Grafana's first step has value None (minus infinity)
Steps = Sequence[Tuple[Optional[float], str]]


def steps_up(warn: float, bad: float) -> Steps:
    """Higher is worse."""
    return ((None, "green"), (warn, "orange"), (bad, "red"))


def steps_down(bad: float, warn: float) -> Steps:
    """Lower is worse."""
    return ((None, "red"), (bad, "orange"), (warn, "green"))


def _thresholds(steps: Steps) -> gdash.ThresholdsConfig:
    return (gdash.ThresholdsConfig().mode(mdash.ThresholdsMode.ABSOLUTE)
            .steps([mdash.Threshold(value=v, color=c) for v, c in steps]))


def query(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False,
          table: bool = False) -> gprom.Dataquery:
    q = gprom.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    q = q.instant() if instant else q.range()
    if table:
        q = q.format(PromQueryFormat.TABLE)
    return q


def _targets(builder, queries: Iterable[gprom.Dataquery]):
    for q in queries:
        builder = builder.with_target(q)
    return builder


def timeseries(title: str, description: str, queries: Sequence[gprom.Dataquery], unit: str,
               *, steps: Optional[Steps] = None, min_val: Optional[float] = 0,
               width: int = 12, height: int = 8, stack: bool = False) -> gts.Panel:
    p = (gts.Panel().title(title).description(description).datasource(DATASOURCE)
         .unit(unit).span(width).height(height).line_width(1).fill_opacity(10)
         .legend(VizLegendOptions().display_mode(mcommon.LegendDisplayMode.TABLE)
                 .placement(mcommon.LegendPlacement.BOTTOM).show_legend(True)
                 .calcs(["lastNotNull", "min", "max"])))
    if min_val is not None:
        p = p.min(min_val)
    if steps:
        p = (p.thresholds(_thresholds(steps))
             .thresholds_style(GraphThresholdsStyleConfig().mode(mcommon.GraphThresholdsStyleMode.DASHED)))
    if stack:
        p = p.stacking(StackingConfig().mode(mcommon.StackingMode.NORMAL))
    return _targets(p, queries)


def stat(title: str, description: str, queries: Sequence[gprom.Dataquery], unit: str,
         *, steps: Optional[Steps] = None, mappings: Optional[List[mdash.ValueMap]] = None,
         width: int = 6, height: int = 4) -> gstat.Panel:
    p = (gstat.Panel().title(title).description(description).datasource(DATASOURCE)
         .unit(unit).span(width).height(height)
         .color_mode(mcommon.BigValueColorMode.BACKGROUND)
         .graph_mode(mcommon.BigValueGraphMode.NONE)
         .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    if steps:
        p = p.thresholds(_thresholds(steps))
    if mappings:
        p = p.mappings(mappings)
    return _targets(p, queries)


def value_map(values: Iterable[Tuple[int, str, str]]) -> List[mdash.ValueMap]:
    """A value -> (text, colour) mapping, e.g. the verdict's exit codes."""
    return [mdash.ValueMap(options={str(v): mdash.ValueMappingResult(text=t, color=c, index=i)
                                    for i, (v, t, c) in enumerate(values)})]


def table(title: str, description: str, queries: Sequence[gprom.Dataquery],
          columns: Sequence[Tuple[str, str]], *, width: int = 24, height: int = 8) -> gtable.Panel:
    """A table of an instant query's labels: ``columns`` is (label, header) in order;
    every other column (Time, Value, __name__, job, instance) is hidden."""
    order = {label: i for i, (label, _h) in enumerate(columns)}
    p = (gtable.Panel().title(title).description(description).datasource(DATASOURCE)
         .span(width).height(height)
         .with_transformation(mdash.DataTransformerConfig(
             id_val="labelsToFields", options={"mode": "columns"}))
         .with_transformation(mdash.DataTransformerConfig(
             id_val="organize", options={
                 "excludeByName": {"Time": True, "Value": True, "__name__": True,
                                   "job": True, "instance": True},
                 "includeByName": {label: True for label, _h in columns},
                 "indexByName": order,
                 "renameByName": {label: header for label, header in columns}})))
    return _targets(p, queries)


def variables() -> List[gdash.QueryVariable]:
    """fleet, arch, fs, kernel: multi-valued, "All" = any, each narrowed by the ones before."""
    out = []
    before: List[str] = []
    for name, label in config.VARIABLES:
        sel = ",".join(f'{b}=~"${b}"' for b in before)
        q = f"label_values({config.VARIABLE_SOURCE}{{{sel}}}, {name})" if sel else \
            f"label_values({config.VARIABLE_SOURCE}, {name})"
        out.append(gdash.QueryVariable(name).label(label).datasource(DATASOURCE)
                   .query(q).refresh(mdash.VariableRefresh.ON_TIME_RANGE_CHANGED)
                   .sort(mdash.VariableSort.ALPHABETICAL_ASC)
                   .multi(True).include_all(True).all_value(config.ALL_VALUE)
                   .current(mdash.VariableOption(selected=True, text="All", value="$__all")))
        before.append(name)
    return out


def regression_annotations() -> List[gdash.AnnotationQuery]:
    """Regressions on the time axis: the annotations `foliowatch dashboards push` posts
    from the detector's records (Grafana's store, by tag), and the open regressions as
    Prometheus sees them (so the marks are there even before a push)."""
    stored = (gdash.AnnotationQuery().name("Regressions (detector records)")
              .datasource(GRAFANA_DATASOURCE).enable(True).icon_color("red")
              .target(gdash.AnnotationTarget().type("tags").tags(config.ANNOTATION_TAGS)
                      .match_any(False).limit(200)))
    # one series per regression and status (the headline's numbers move every
    # evaluation, so foliowatch_regression_info would start a new region each time)
    live = (gdash.AnnotationQuery().name("Open regressions (Prometheus)")
            .datasource(DATASOURCE).enable(True).icon_color("orange")
            .expr("max by (fleet, role, arch, page_size, fs, kernel_from, kernel_to, status) "
                  f"(foliowatch_regression_open{{{config.cohort_selector(kernel_label='kernel_to')}}})"))
    return [stored, live]


def dashboard(uid: str, title: str, description: str, rows: Sequence[Tuple[str, Sequence]],
              *, annotations: bool = False) -> gdash.Dashboard:
    d = (gdash.Dashboard(title).uid(uid).description(description).tags(config.TAGS)
         .refresh(config.REFRESH).time(config.TIME_FROM, "now").timezone("utc")
         .tooltip(mdash.DashboardCursorSync.CROSSHAIR).editable())
    for v in variables():
        d = d.with_variable(v)
    if annotations:
        for a in regression_annotations():
            d = d.annotation(a)
    # explicit ids: links to a panel (viewPanel=N) survive regeneration
    next_id = 1
    for row_title, panels in rows:
        d = d.with_row(gdash.Row(row_title).id(next_id))
        next_id += 1
        for p in panels:
            d = d.with_panel(p.id(next_id))
            next_id += 1
    return d
