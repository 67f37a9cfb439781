"""Alerts people receive: signed webhooks (#22). See webhooks.py."""

from ethereal.alerts.webhooks import EVENTS, Alerts, BudgetWatch, generate_secret, sign, verify

__all__ = ["EVENTS", "Alerts", "BudgetWatch", "generate_secret", "sign", "verify"]
