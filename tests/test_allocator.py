"""training/allocator.py: freed activations are reused by the next step instead of faulting in new pages."""

import resource
import sys

import pytest
import torch

from tinyscale.training.allocator import keep_freed_memory


def _faults_of_a_fresh_tensor(mb: int) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(mb << 18)  # mb megabytes of float32, written and freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_freed_block_is_reused_without_page_faults():
    if not keep_freed_memory():
        pytest.skip("not glibc")
    for _ in range(3):  # the first ones fault their pages in (and may land apart)
        _faults_of_a_fresh_tensor(8)
    pages = (8 << 20) // resource.getpagesize()  # glibc's default gives them back: 2048 faults each time
    assert min(_faults_of_a_fresh_tensor(8) for _ in range(3)) < pages // 10
