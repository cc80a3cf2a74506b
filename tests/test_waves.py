"""The batch schedule as a pure function: sizes, resets after a straggler, caps, and bad values."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fleet.contract import ContractError
from fleet.inputs import number
from rollout.waves import Waves, cut, parse_cap, sizes_line


def walk(waves: Waves, total: int, straggles_in: set[int] = frozenset()) -> list[int]:
    """The sizes the drive walks when the batches numbered in `straggles_in` (from 1) quarantine one."""
    sizes: list[int] = []
    left = total
    while left > 0:
        size = waves.next_size(sizes[-1] if sizes else None, left, straggled=len(sizes) in straggles_in)
        sizes.append(size)
        left -= size
    return sizes


def test_growth_two_from_three_for_39_tenants():
    assert Waves(3, Decimal(2)).sizes(39) == [3, 6, 12, 18]


def test_a_straggler_in_the_second_batch_resets_the_next_to_batch_size():
    assert walk(Waves(3, Decimal(2)), 39, straggles_in={2}) == [3, 6, 3, 6, 12, 9]


def test_a_cap_holds_every_batch():
    assert Waves(3, Decimal(2), cap=5).sizes(22) == [3, 5, 5, 5, 4]


def test_a_percentage_cap_is_rounded_down_and_at_least_one():
    assert parse_cap("25%").resolve(40) == 10
    assert parse_cap("10%").resolve(7) == 1
    assert Waves(3, Decimal(2), cap=parse_cap("25%").resolve(40)).sizes(39) == [3, 6, 10, 10, 10]


def test_growth_one_and_a_half_rounds_up():
    assert Waves(3, Decimal("1.5")).sizes(60)[:5] == [3, 5, 8, 12, 18]


def test_growth_one_is_todays_fixed_batches():
    assert Waves(3).sizes(8) == [3, 3, 2]


def test_a_fleet_of_1000_in_nine_calls():
    sizes = Waves(3, Decimal(2)).sizes(1000)
    assert sizes == [3, 6, 12, 24, 48, 96, 192, 384, 235] and sum(sizes) == 1000
    assert sizes_line(sizes) == "3, 6, 12, …, 384, 235"
    assert sizes_line([3, 6, 12]) == "3, 6, 12"


def test_cut_follows_the_sizes():
    assert cut(list("abcdefg"), [1, 2, 4]) == [["a"], ["b", "c"], ["d", "e", "f", "g"]]


@pytest.mark.parametrize("text", ["0.5", "abc", "-1", "0", "", "1.", "2.12345"])
def test_bad_growth_is_refused_naming_it(text):
    with pytest.raises(ContractError, match="batch-growth must be a number >= 1, decimals allowed"):
        number("batch-growth", text, minimum=1)


@pytest.mark.parametrize("text", ["0%", "150%", "-1", "0", "abc", "5.5", "%"])
def test_bad_cap_is_refused_naming_it(text):
    with pytest.raises(ContractError, match="max-batch-size must be empty, an integer >= 1, or a percentage"):
        parse_cap(text)


def test_good_values_parse():
    assert number("batch-growth", "2", 1) == 2 and number("batch-growth", "1.5", 1) == Decimal("1.5")
    assert parse_cap("").resolve(10) is None and parse_cap("5").resolve(10) == 5
    assert parse_cap("100%").resolve(10) == 10


@pytest.mark.parametrize(
    "waves", [Waves(3), Waves(1), Waves(3, Decimal(2)), Waves(3, Decimal("1.5"), cap=7), Waves(2, Decimal("1.01"))]
)
@pytest.mark.parametrize("total", [0, 1, 2, 39, 1000])
def test_the_count_is_the_number_of_sizes(waves, total):
    assert waves.count(total) == len(waves.sizes(total))
    assert waves.count(total, 3, straggled=True) == len(waves.sizes(total, 3, straggled=True))
