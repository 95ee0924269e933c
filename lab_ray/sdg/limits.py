"""Ray Data resource limits shared by generation and finalize."""

# Tasks with fractional CPUs: cap how many of one operator run at once, or Ray
# starts one worker process per slot (~20 on 2 CPUs) and the process tree's
# memory grows with them while the work itself is cheap.
TASK_CONCURRENCY = 2


def task_pool():
    """compute= for a task operator with the cap above (Ray 2.51+ deprecates concurrency=)."""
    import ray.data

    return ray.data.TaskPoolStrategy(size=TASK_CONCURRENCY)
