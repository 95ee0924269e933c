"""Test doubles for tests and benchmarks: never on a default code path.

`fake_teachers` holds in-process teachers (instant, faulty) that honour the
teacher client's contract; a run uses one only when `sdg.test_teacher` names it.
"""
