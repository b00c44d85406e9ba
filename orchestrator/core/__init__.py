"""The pure core: what happens next in a run, decided from a frozen snapshot and one input.

- ``vocabulary``: event types and step error codes;
- ``reports``: what an attempt came to (``Outcome``), as a worker or the scheduler reports it;
- ``snapshot``: ``RunState`` and ``StepState``, frozen values built from rows;
- ``transition``: ``Transition``, the value a decision returns and the writer applies;
- ``decide`` and its helpers: the decisions themselves.

Nothing here does I/O, reads a clock or draws a random number: callers inject what they need.
"""
