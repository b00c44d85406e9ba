"""Switchyard's Celery workers: they run agent, tool and LLM steps and report every outcome."""
