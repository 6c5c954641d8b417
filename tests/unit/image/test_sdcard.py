"""Card layout: a power of two, aligned partitions, room for the root and the data."""

import pytest

from appliance.image import sdcard


@pytest.mark.parametrize("root_bytes", [1, 57_344_000, 64 << 20, 300 << 20])
def test_layout_is_a_power_of_two_with_aligned_partitions(root_bytes: int) -> None:
    layout = sdcard.plan(root_bytes)
    assert layout.total & (layout.total - 1) == 0
    for offset in (layout.boot_start, layout.root_start, layout.data_start):
        assert offset % sdcard.ALIGN == 0
    assert layout.root_size >= root_bytes
    assert layout.boot_start + layout.boot_size == layout.root_start
    assert layout.root_start + layout.root_size == layout.data_start
    assert layout.data_start + layout.data_size == layout.total
    assert layout.data_size >= sdcard.MIN_DATA_SIZE
