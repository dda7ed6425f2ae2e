"""A policy's PromQL may read only its own namespace: the structural check, table-driven, with
the hostile templates a tenant would try."""

from __future__ import annotations

import pytest

from qscale import features
from qscale.operator.promql import TemplateError, check_template, peak_points

NS = 'namespace=~"$namespace"'
POD = 'pod=~"($deployment)-[a-z0-9]+-[a-z0-9]{5}"'


@pytest.mark.parametrize("name", sorted(features.PROMQL))
def test_the_default_queries_pass(name):
    check_template(features.PROMQL[name])


@pytest.mark.parametrize(
    "query",
    [
        f"sum by (namespace, deployment) (rate(http_requests_total{{{NS}, {POD}}}[1m]))",
        f"sum(rate(x{{{NS}, {POD}}}[5m:1m] offset 1d)) by (namespace, deployment)",
        f'label_replace(up{{{NS}, {POD}}}, "deployment", "$1", "pod", "(.+)-x")',
        f"avg without (pod) (x{{{NS}, {POD}}}) / on(namespace) group_left() y{{{NS}, {POD}}}",
        f"topk(1, x{{{NS}, {POD}}}) * 2 + 1 > bool 0.5e3",
        f'{{__name__="x", {NS}, {POD}}} @ start()',
    ],
)
def test_scoped_templates_pass(query):
    check_template(query)


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("sum(rate(http_requests_total[1m])) # $namespace $deployment", "comments"),
        ("sum(rate(http_requests_total[1m]))", "needs the matcher"),
        (f"x{{{NS}, {POD}}} or vector(1000)", None),  # a constant: allowed, unattributable
        (f'x{{{NS}, {POD}}} or y{{namespace="other"}}', "needs the matcher"),
        (f"x{{{NS}, {POD}}} or y{{{POD}}}", "needs the matcher"),
        (f'x{{namespace=~"$namespace|kube-system", {POD}}}', "namespace"),
        (f'x{{namespace="$namespace", {POD}}}', "namespace"),
        (f'x{{namespace!~"$namespace", {POD}}}', "namespace"),
        (f'x{{{NS}, pod="$deployment"}}', "regex matcher"),
        (f"x{{{NS}}}", "$deployment must appear"),
        (f'label_replace(x{{{NS}, {POD}}}, "a", "$namespace", "b", "")', "only appear inside"),
        (f'x{{{NS}, {POD}}} + y{{{NS}, {POD}, z="a"', "unclosed"),
        (f"x{{{NS}, {POD}}} ; drop", "unexpected"),
        ('x{"} or vector(1) #"}', "matcher"),
        ("vector(1)", "reads no series"),
        (f"sum(x{{{NS}, {POD}}}}})", "unbalanced"),
        (f"sum(x{{{NS}, {POD}}}", "unclosed"),
    ],
)
def test_hostile_templates_are_refused(query, why):
    if why is None:
        check_template(query)
        return
    with pytest.raises(TemplateError, match=None) as e:
        check_template(query)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_a_refused_template_is_refused_every_time_and_a_passing_one_is_remembered():
    bad = 'x{"} or vector(1) #"}'
    for _ in range(3):  # a failure is never remembered as a pass
        with pytest.raises(TemplateError):
            check_template(bad)
    good = features.PROMQL["request_rate"]
    check_template(good)
    hits = check_template.cache_info().hits
    check_template(good)
    assert check_template.cache_info().hits == hits + 1


@pytest.mark.parametrize(
    ("query", "inner"),
    [
        (features.PROMQL["cpu_peak"], features.PROMQL["cpu_peak"][len("max_over_time(") : -1]),
        (f"max_over_time(x{{{NS}, {POD}}}[20s:2s])", f"x{{{NS}, {POD}}}[20s:2s]"),
        (f'max_over_time(x{{{NS}, {POD}, a=")"}}[1h:1m])', f'x{{{NS}, {POD}, a=")"}}[1h:1m]'),
        # raw samples, a default step or more than 64 points: the peak alone
        (f"max_over_time(x{{{NS}, {POD}}}[30m])", None),
        (f"max_over_time(x{{{NS}, {POD}}}[30m:])", None),
        (f"max_over_time(x{{{NS}, {POD}}}[30m:1s])", None),
        (f"max_over_time(x{{{NS}, {POD}}}[30m:0s])", None),
        # any other form is read as the peak alone
        (f"max_over_time(x{{{NS}, {POD}}}[5m:1m]) + max_over_time(y{{{NS}, {POD}}}[5m:1m])", None),
        (f"max_over_time(x{{{NS}, {POD}}}[5m:1m]) or vector(1)", None),
        (f"max_over_time(x{{{NS}, {POD}}})", None),
        (f"max(x{{{NS}, {POD}}}[5m])", None),
        (f"x{{{NS}, {POD}}}", None),
        ("max_over_time(x[5m]) # comment", None),
    ],
)
def test_the_points_behind_a_peak_are_a_part_of_its_template(query, inner):
    got = peak_points(query)
    assert got == inner
    if got is not None:
        check_template(got)  # a part of a scoped template is scoped
