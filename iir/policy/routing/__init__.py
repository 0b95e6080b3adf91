"""Routing for ``model: "auto"``: cheap request features, a task classifier, the operator's policy
and the strategies that turn them into an ordered list of models to try."""
