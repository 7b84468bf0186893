"""How the run's CPUs and memory are shared between units that run side by side."""

from bids_mcsr.cli.resources import GB, Resources, available_memory_bytes, run_resources


def test_one_unit_gets_every_cpu_as_threads():
    grant = Resources(nprocs=2, omp_nthreads=None, mem_gb=None, budget_bytes=8 * GB).grant(
        GB, waiting=1)
    assert (grant.cpus, grant.threads, grant.mem_gb) == (2, 2, None)


def test_units_split_the_cpus_and_wait_for_a_free_one():
    pool = Resources(nprocs=5, omp_nthreads=None, mem_gb=None, budget_bytes=64 * GB)
    first, second = pool.grant(GB, waiting=3), pool.grant(GB, waiting=2)
    third = pool.grant(GB, waiting=1)
    assert [(g.cpus, g.threads) for g in (first, second, third)] == [(1, 1), (2, 2), (2, 2)]
    assert sum(g.cpus for g in pool.held) == 5
    assert Resources(2, None, None, 64 * GB).grant(GB, 1).cpus == 2
    full = Resources(nprocs=2, omp_nthreads=None, mem_gb=None, budget_bytes=64 * GB)
    held = [full.grant(GB, waiting=3), full.grant(GB, waiting=2)]
    assert full.grant(GB, waiting=1) is None
    full.release(held[0])
    assert full.grant(GB, waiting=1).cpus == 1


def test_fixed_threads_per_step_limit_the_units_at_once():
    pool = Resources(nprocs=8, omp_nthreads=4, mem_gb=None, budget_bytes=64 * GB)
    grants = [pool.grant(GB, waiting=3), pool.grant(GB, waiting=2)]
    assert [(g.cpus, g.threads) for g in grants] == [(4, 4), (4, 4)]
    assert pool.grant(GB, waiting=1) is None


def test_memory_decides_how_many_run_side_by_side():
    pool = Resources(nprocs=8, omp_nthreads=None, mem_gb=5.0, budget_bytes=5 * GB)
    first = pool.grant(2 * GB, waiting=3)
    second = pool.grant(2 * GB, waiting=2)
    assert first.mem_gb is None and second.mem_gb is None  # the default plans fit together
    assert pool.grant(2 * GB, waiting=1) is None  # a third would not fit beside them
    pool.release(first)
    pool.release(second)
    alone = pool.grant(7 * GB, waiting=1)  # too large even alone: the whole --mem-gb
    assert alone.mem_gb == 5.0 and alone.reserved_bytes == 5 * GB and alone.cpus == 8
    assert pool.grant(GB, waiting=1) is None


def test_the_budget_is_mem_gb_else_the_available_memory():
    assert run_resources(16, None, 6.0, "cpu").budget_bytes == 6 * GB
    assert 0 < run_resources(16, None, None, "cpu").budget_bytes <= 2 * available_memory_bytes()


def test_a_gpu_run_takes_one_unit_at_a_time():
    assert run_resources(16, None, 64.0, "cuda").width == 1
    assert run_resources(16, None, None, "cpu").width == 16
