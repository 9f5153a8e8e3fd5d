"""obliviate.training.memory: the peak memory of one stretch of work inside a longer process."""

from obliviate.training.memory import open_window


def test_window_sees_an_allocation_made_inside_it():
    import torch

    window = open_window("cpu")
    block = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB, touched
    inside = window.added_bytes()
    del block
    assert inside >= 60 * 2 ** 20
    assert window.record()["peak_memory_added_bytes"] >= 60 * 2 ** 20


def test_a_new_window_forgets_an_earlier_peak():
    import torch

    block = torch.ones(128 * 2 ** 20 // 4)
    del block
    window = open_window("cpu")
    small = torch.ones(2 ** 20 // 4)
    if window.source.startswith("VmHWM"):  # the reset is allowed (Linux): the earlier 128 MiB are not counted
        assert window.added_bytes() < 64 * 2 ** 20
    del small
