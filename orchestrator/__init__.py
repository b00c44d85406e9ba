"""Switchyard's core: the state machine, the DAG, persistence, dispatch and the scheduler."""
