"""Observability: the JSON log's set-up (``logs``), the request log (``requestlog``), the audit
log (``audit``) and Prometheus metrics (``metrics``)."""

from .audit import EVENTS, audit_event

__all__ = ["EVENTS", "audit_event"]
