"""Prefect deployments of closedloop's flows (configuration: names, parameters, schedules, triggers)."""
