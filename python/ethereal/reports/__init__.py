"""The usage and cost reports FinOps tools already read, in Anthropic's Admin API shapes (#22).

``GET /v1/organizations/usage_report/messages`` and ``GET /v1/organizations/cost_report``
(api.py), served from the sums the console keeps (PostgreSQL's ``usage_hourly`` rollup, the
records on SQLite; storage/report.py). docs/reports.md says what is Anthropic's and what is an
extension.
"""
