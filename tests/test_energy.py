import math

import pytest

from tracker.measurement.energy import KWH_TO_J, Energy


def test_total_and_joules():
    e = Energy(cpu_kwh=1.0, gpu_kwh=2.0, ram_kwh=0.5, emissions_kg=0.1, duration_s=10)
    assert e.total_kwh == 3.5
    assert e.total_j == pytest.approx(3.5 * KWH_TO_J)


def test_subtract_add_and_divide():
    a = Energy(2.0, 4.0, 1.0, 0.4, 20)
    b = Energy(1.0, 1.0, 0.5, 0.1, 5)
    assert a - b == Energy(1.0, 3.0, 0.5, 0.30000000000000004, 15)
    assert (a - b) + b == a
    share = a / 4
    assert share.gpu_kwh == 1.0 and share.duration_s == 5


def test_per_1k_is_the_papers_unit():
    # 0.05 kWh over 500 inferences is 0.1 kWh per 1,000.
    e = Energy(0.02, 0.02, 0.01, 0.0, 100)
    assert e.per_1k(500).total_kwh == pytest.approx(0.1)


def test_divide_by_zero_units_is_refused():
    with pytest.raises(ValueError):
        Energy(1, 1, 1, 1, 1) / 0


def test_unavailable_stays_nan_through_arithmetic():
    missing = Energy.unavailable(duration_s=3.0)
    assert math.isnan(missing.total_kwh)
    assert math.isnan((missing + Energy(1, 1, 1, 1, 1)).cpu_kwh)
    assert math.isnan(missing.per_1k(10).total_kwh)
